//! e2e: `metroctl dashboard` in a real browser. Headless Chromium (Debian's `chromium`),
//! driven over the Chrome DevTools protocol, opens the page of a cluster with one UP node and
//! one NEW node; the DOM shows both with their states, the leader and the consensus member.
//! `metroctl approve` then moves the NEW node on, and the open page shows it UP without a
//! reload (a marker set in the page survives). The node page shows the node's logs, the
//! filter box narrows the table, and a screenshot at a phone's width is saved under
//! target/test-artifacts/.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use common::{ENROLMENT, Metroctl};
use futures::{SinkExt, StreamExt};
use launch::{Node, NodeConfig, RestartPolicy};
use serde_json::{Value, json};
use test_support::{LoopbackBlock, eventually};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

/// Bound of every DevTools call and of each wait for the page.
const PAGE: Duration = Duration::from_secs(30);
/// Bound of Chromium's start (slow on a loaded machine: it starts several processes).
const BROWSER_START: Duration = Duration::from_secs(90);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A headless Chromium with one page, driven over the DevTools protocol.
struct Browser {
    _child: Child,
    _profile: tempfile::TempDir,
    socket: Socket,
    session: String,
    next_id: u64,
}

impl Browser {
    /// Starts Chromium and attaches to a new page with a phone's viewport.
    async fn start() -> Browser {
        let profile = tempfile::tempdir().expect("profile directory");
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                // Root (CI containers) cannot use Chromium's sandbox.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromium (Debian package chromium)");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut said = Vec::new();
        let url = tokio::time::timeout(BROWSER_START, async {
            while let Some(line) = stderr.next_line().await.expect("chromium stderr") {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return Some(url.trim().to_string());
                }
                said.push(line);
            }
            None
        })
        .await;
        let Ok(Some(url)) = url else {
            panic!(
                "chromium announced no DevTools address within {BROWSER_START:?}:\n{}",
                said.join("\n")
            );
        };
        // Keep draining stderr so Chromium never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("DevTools websocket");
        let mut browser = Browser {
            _child: child,
            _profile: profile,
            socket,
            session: String::new(),
            next_id: 0,
        };
        let target = browser
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target_id = target["targetId"].as_str().expect("targetId").to_string();
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await;
        browser.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        browser.call("Page.enable", json!({})).await;
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": 412, "height": 915, "deviceScaleFactor": 2, "mobile": true}),
            )
            .await;
        browser
    }

    /// One DevTools call (on the page once attached); its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        self.socket
            .send(Message::text(message.to_string()))
            .await
            .expect("send to DevTools");
        let answer = tokio::time::timeout(PAGE, async {
            loop {
                let frame = self
                    .socket
                    .next()
                    .await
                    .expect("DevTools websocket open")
                    .expect("DevTools frame");
                let Message::Text(text) = frame else { continue };
                let value: Value = serde_json::from_str(&text).expect("DevTools JSON");
                // Events (no id) and answers to earlier calls are skipped.
                if value["id"] == json!(id) {
                    return value;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no DevTools answer to {method} within {PAGE:?}"));
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
    }

    /// The value of a JavaScript expression in the page (null while it throws).
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        result["result"]["value"].clone()
    }

    /// `[node ID, state]` of every row of the nodes table.
    async fn rows(&mut self) -> Vec<(String, String)> {
        let rows = self
            .eval(
                "Array.from(document.querySelectorAll('#nodes tr[data-node]'))\
                 .map(r => [r.dataset.node, r.querySelector('td.state').textContent])",
            )
            .await;
        rows.as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        (
                            r[0].as_str().unwrap_or_default().to_string(),
                            r[1].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until the nodes table shows exactly `want` (ID, state), sorted by ID.
    async fn wait_rows(&mut self, want: &[(String, String)]) {
        let mut want = want.to_vec();
        want.sort();
        eventually(PAGE, async || {
            let rows = self.rows().await;
            if rows == want {
                Ok(())
            } else {
                Err(format!("{rows:?}"))
            }
        })
        .await
        .unwrap_or_else(|e| panic!("the page never showed {want:?}: {e}"));
    }

    /// A PNG of the page as it is, saved under target/test-artifacts/.
    async fn screenshot(&mut self, name: &str) -> PathBuf {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        // The test runs from target/<profile>/deps/.
        let exe = std::env::current_exe().expect("test path");
        let target = exe
            .ancestors()
            .nth(3)
            .expect("the target directory")
            .join("test-artifacts");
        std::fs::create_dir_all(&target).expect("artifact directory");
        let path = target.join(name);
        std::fs::write(&path, png).expect("write screenshot");
        path
    }
}

/// Starts `metroctl dashboard` on a free loopback port; the child and the page's URL.
async fn start_dashboard(mctl: &Metroctl) -> (Child, String) {
    let mut child = mctl
        .command(&["dashboard", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start metroctl dashboard");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(PAGE, stdout.next_line())
        .await
        .expect("the dashboard announces its address")
        .expect("read stdout")
        .expect("metroctl dashboard exited");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_string();
    (child, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_browser() {
    let block = LoopbackBlock::allocate();
    let cluster = common::start(1, &block).await;
    let id1 = cluster.id_of(0).expect("id of the first node");
    let tmp = tempfile::tempdir().expect("tempdir");
    let mctl = Metroctl {
        config: cluster.state_dir().to_path_buf(),
        endpoints: Some(block.host(1).to_string()),
    };

    // A second node registers and waits in NEW.
    let dir = tmp.path().join("node2");
    let params = dir.join("parameters.pb");
    mctl.run(&["cluster", "node-params", params.to_str().expect("utf8")])
        .await
        .ok();
    let node2 = Node::new(NodeConfig {
        index: 1,
        address: block.addr(2),
        dir: dir.clone(),
        binary: launch::find_node_binary(None).expect("metropolis-node (cargo build -p node)"),
        parameters: Some(params),
        etcd: cluster.options().etcd_binary.clone(),
        leader_ttl: cluster.options().leader_ttl,
        skip_peer_client_san_check: true,
        extra_args: Vec::new(),
        env: Vec::new(),
        wrapper: Vec::new(),
        echo: cluster.options().echo_logs,
        restart: RestartPolicy::OnRebootRequest,
    });
    node2.start().expect("start node 2");
    let id2 = node2.wait_id(ENROLMENT).await.expect("node 2's ID");
    mctl.run_until(&["approve", "-o", "json"], ENROLMENT, |r| {
        r.code == 0 && r.stdout.contains(&id2)
    })
    .await;

    let (mut dashboard, url) = start_dashboard(&mctl).await;
    let mut browser = Browser::start().await;
    browser.navigate(&url).await;

    // Every node with its state, the leader, the consensus member.
    browser
        .wait_rows(&[(id1.clone(), "UP".into()), (id2.clone(), "NEW".into())])
        .await;
    assert_eq!(
        browser
            .eval("document.querySelector('#leader').textContent")
            .await,
        json!(id1)
    );
    assert_eq!(
        browser
            .eval(
                "Array.from(document.querySelectorAll('#consensus tr[data-member]'))\
                 .map(r => [r.dataset.member, r.cells[1].textContent])"
            )
            .await,
        json!([[id1, "FULL"]])
    );
    assert_eq!(
        browser
            .eval("document.querySelector('meta[name=viewport]') !== null")
            .await,
        json!(true)
    );
    // The event stream is connected before anything changes.
    eventually(PAGE, async || {
        let conn = browser
            .eval("document.getElementById('conn').textContent")
            .await;
        if conn == json!("live") {
            Ok(())
        } else {
            Err(conn)
        }
    })
    .await
    .expect("the page's event stream connects");

    // Approve from metroctl; the open page follows without a reload.
    browser.eval("window.notReloaded = true").await;
    mctl.run(&["approve", &id2]).await.ok();
    browser
        .wait_rows(&[(id1.clone(), "UP".into()), (id2.clone(), "UP".into())])
        .await;
    assert_eq!(
        browser.eval("window.notReloaded === true").await,
        json!(true),
        "the page was reloaded instead of updated"
    );
    let shot = browser.screenshot("metroctl-dashboard.png").await;
    println!("dashboard screenshot: {}", shot.display());

    // The filter box: the cluster evaluates the CEL filter.
    let filtered = format!("{url}?filter=node.id%20%3D%3D%20%22{id2}%22");
    browser.navigate(&filtered).await;
    browser.wait_rows(&[(id2.clone(), "UP".into())]).await;
    // A filter the cluster refuses is explained on the page.
    browser.navigate(&format!("{url}?filter=node.nope(")).await;
    eventually(PAGE, async || {
        let error = browser
            .eval("document.querySelector('#nodes-error').textContent")
            .await;
        if error
            .as_str()
            .is_some_and(|e| e.contains("rejected the filter"))
        {
            Ok(())
        } else {
            Err(error)
        }
    })
    .await
    .expect("the refused filter is explained");

    // The node page shows its recent logs.
    browser.navigate(&format!("{url}node/{id1}")).await;
    eventually(PAGE, async || {
        let logs = browser
            .eval("document.querySelector('#logs').textContent")
            .await;
        if logs.as_str().is_some_and(|l| l.contains("root")) {
            Ok(())
        } else {
            Err(logs)
        }
    })
    .await
    .expect("the node page shows logs");

    let _ = dashboard.kill().await;
    node2.kill_now();
    cluster.shutdown().await;
}

/// The page answers only requests for its own address (no DNS rebinding), and only reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_answers_only_its_own_host_and_only_reads() {
    let block = LoopbackBlock::allocate();
    let cluster = common::start(1, &block).await;
    let mctl = Metroctl {
        config: cluster.state_dir().to_path_buf(),
        endpoints: Some(block.host(1).to_string()),
    };
    // Refused before anything is contacted.
    let run = mctl
        .run(&["dashboard", "--listen", "0.0.0.0:0"])
        .await
        .failed(2);
    assert!(run.stderr.contains("--allow-remote"), "{run}");

    let (mut dashboard, url) = start_dashboard(&mctl).await;
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let raw = async |request: String| -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        s.write_all(request.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // The status line and headers are enough.
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(PAGE, s.read(&mut buf))
                .await
                .expect("an answer")
                .expect("read");
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    let ok = raw(format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    ))
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(
        ok.to_ascii_lowercase().contains("content-security-policy"),
        "{ok}"
    );
    let rebound =
        raw("GET / HTTP/1.1\r\nHost: attacker.example:80\r\nConnection: close\r\n\r\n".into())
            .await;
    assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");
    let post = raw(format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ))
    .await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");

    let _ = dashboard.kill().await;
    cluster.shutdown().await;
}
