//! End to end: the inspector page and the JavaScript client are served by the
//! binary on the WebSocket port, and `statecast-server schema [--ts]` prints the
//! schema. (The page itself is tested in headless Chromium by `just e2e`.)

mod common;

use common::*;
use std::process::Command;

fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    let head = resp.split("\r\n\r\n").next()?;
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn the_inspector_and_its_modules_are_served_beside_the_websocket() {
    let server = TestServer::start();
    let page = server.http_get("/").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert_eq!(header(&page, "content-type"), Some("text/html; charset=utf-8"));
    assert!(page.contains(r#"<meta name="statecast-ws-path" content="/ws">"#), "{page}");
    for (path, ty, needle) in [
        ("/inspector.js", "text/javascript", "import { StatecastClient, compileFilters } from './statecast.js'"),
        ("/statecast.js", "text/javascript", "export class StatecastClient"),
        ("/replica.js", "text/javascript", "export class Replica"),
        ("/tabs.js", "text/javascript", "export class TabClient"),
        ("/idb.js", "text/javascript", "export class IdbStorage"),
        ("/store.js", "text/javascript", "export function contextSource"),
        ("/inspector.css", "text/css", ".pending"),
        ("/statecast.d.ts", "application/typescript", "export class StatecastClient"),
    ] {
        let resp = server.http_get(path).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "GET {path}: {resp}");
        assert!(header(&resp, "content-type").is_some_and(|t| t.starts_with(ty)), "GET {path}: {resp}");
        assert_eq!(header(&resp, "cache-control"), Some("no-cache"), "GET {path}");
        assert!(resp.contains(needle), "GET {path} lacks {needle}");
        let module = path != "/inspector.js" && path != "/inspector.css";
        let cors = header(&resp, "access-control-allow-origin");
        assert_eq!(cors, module.then_some("*"), "GET {path}: other origins may import the client modules only");
    }
    let missing = server.http_get("/nothing-here").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    // The WebSocket still answers on its path.
    let mut c = server.json().await;
    c.hello("alice").await;
}

#[tokio::test]
async fn a_custom_websocket_path_is_told_to_the_page() {
    let server = TestServer::start_args(&["--ws-path", "/sync"]);
    let page = server.http_get("/").await;
    assert!(page.contains(r#"content="/sync""#), "{page}");
}

fn run_schema(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_statecast-server")).arg("schema").args(args).output().expect("run");
    assert!(out.status.success(), "schema {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn schema_prints_the_welcome_schema_as_json() {
    let v: serde_json::Value = serde_json::from_str(&run_schema(&[])).expect("JSON");
    assert_eq!(v["channels"][0]["name"], "job");
    assert!(v["types"]["Task"]["fields"].as_array().is_some_and(|f| f.len() == 8));
}

#[test]
fn schema_ts_prints_typescript_interfaces() {
    let ts = run_schema(&["--ts"]);
    assert!(ts.starts_with("// The entity types of this Statecast app"), "{ts}");
    for needle in [
        "export interface Task {",
        "  status: \"todo\" | \"doing\" | \"done\";",
        "  assignee: Id | null;",
        "export interface TaskCreate {",
        "export interface Entities {",
    ] {
        assert!(ts.contains(needle), "{needle} in\n{ts}");
    }
}
