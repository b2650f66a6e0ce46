// Compiles the Svelte components and bundles src/main.js into dist/ with esbuild.
import { build } from 'esbuild';
import sveltePlugin from 'esbuild-svelte';
import { cpSync, mkdirSync } from 'node:fs';

mkdirSync('dist', { recursive: true });
cpSync('index.html', 'dist/index.html');
cpSync('src/app.css', 'dist/app.css');
await build({
  entryPoints: ['src/main.js'],
  bundle: true,
  format: 'esm',
  target: 'es2022',
  minify: true,
  sourcemap: true,
  mainFields: ['svelte', 'browser', 'module', 'main'],
  conditions: ['svelte', 'browser'],
  plugins: [sveltePlugin({ compilerOptions: { css: 'injected', warningFilter: (w) => w.code !== 'state_referenced_locally' } })],
  outfile: 'dist/main.js',
  logLevel: 'warning',
});
console.log('built dist/');
