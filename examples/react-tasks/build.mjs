// Bundles src/main.jsx (and the packages it imports) into dist/ with esbuild.
import { build } from 'esbuild';
import { cpSync, mkdirSync } from 'node:fs';

mkdirSync('dist', { recursive: true });
cpSync('index.html', 'dist/index.html');
cpSync('src/app.css', 'dist/app.css');
await build({
  entryPoints: ['src/main.jsx'],
  bundle: true,
  format: 'esm',
  target: 'es2022',
  minify: process.env.NODE_ENV !== 'development',
  sourcemap: true,
  jsx: 'automatic',
  define: { 'process.env.NODE_ENV': JSON.stringify(process.env.NODE_ENV ?? 'production') },
  outfile: 'dist/main.js',
  logLevel: 'warning',
});
console.log('built dist/');
