//! The polling, allocation and logging helpers, on their own.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use test_support::eventually::NotYet;
use test_support::{LoopbackBlock, eventually};

#[tokio::test(start_paused = true)]
async fn eventually_returns_the_first_success() {
    let mut calls = 0;
    let value = eventually(Duration::from_secs(10), async || {
        calls += 1;
        if calls < 4 {
            Err(format!("call {calls}"))
        } else {
            Ok(calls * 10)
        }
    })
    .await
    .expect("succeeds on the fourth call");
    assert_eq!(value, 40);
    assert_eq!(calls, 4);
}

#[tokio::test(start_paused = true)]
async fn eventually_gives_up_at_the_deadline_with_the_last_error() {
    let start = tokio::time::Instant::now();
    let mut calls = 0;
    let err = eventually(Duration::from_secs(3), async || {
        calls += 1;
        Err::<(), _>(format!("attempt {calls} failed"))
    })
    .await
    .expect_err("never succeeds");
    // On paused time the pauses are exact: the last attempt runs right at the deadline.
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert_eq!(err.after, Duration::from_secs(3));
    assert_eq!(err.attempts, calls);
    assert_eq!(err.last, format!("attempt {calls} failed"));
    // 10, 20, …, 320 ms, then 500 ms pauses: the early attempts are quick, the later spaced.
    assert!((8..=14).contains(&calls), "{calls} attempts");
    let message = format!("{err:?}");
    assert!(message.contains("still failing after 3s"), "{message}");
    assert!(
        message.contains(&format!("last error: attempt {calls} failed")),
        "{message}"
    );
}

#[tokio::test(start_paused = true)]
async fn eventually_takes_options_and_bools() {
    let mut n = 0;
    let got = eventually(Duration::from_secs(1), async || {
        n += 1;
        (n == 2).then_some("two")
    })
    .await
    .expect("Some on the second call");
    assert_eq!(got, "two");
    let err = eventually(Duration::from_millis(50), async || false)
        .await
        .expect_err("never true");
    assert_eq!(err.last, NotYet);
    assert!(
        format!("{err}").contains("the condition did not hold"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn eventually_tries_once_even_with_no_time() {
    let mut calls = 0;
    let err = eventually(Duration::ZERO, async || {
        calls += 1;
        false
    })
    .await
    .expect_err("false");
    assert_eq!((calls, err.attempts), (1, 1));
}

#[test]
fn logging_init_is_idempotent() {
    test_support::logging::init();
    test_support::logging::init_with("debug");
    test_support::logging::init();
    tracing::warn!("logged once the subscriber is installed");
}

#[test]
fn blocks_are_distinct_and_released_on_drop() {
    let blocks: Vec<LoopbackBlock> = (0..20).map(|_| LoopbackBlock::allocate()).collect();
    let mut prefixes: Vec<String> = blocks.iter().map(LoopbackBlock::prefix).collect();
    prefixes.sort();
    prefixes.dedup();
    assert_eq!(prefixes.len(), blocks.len(), "{prefixes:?}");
    let first = &blocks[0];
    assert_eq!(first.addr(1).octets()[0], 127);
    assert_eq!(first.host(7), format!("{}.7", first.prefix()));
    assert_eq!(first.to_string(), format!("{}.0/24", first.prefix()));
    // Held: nobody else gets it, not even this process.
    assert!(
        LoopbackBlock::take(&first.prefix())
            .expect("take")
            .is_none()
    );
    let prefix = first.prefix();
    drop(blocks);
    let again = LoopbackBlock::take(&prefix)
        .expect("take")
        .expect("free again once dropped");
    assert_eq!(again.prefix(), prefix);
    assert!(LoopbackBlock::take("10.0.0").is_err());
    assert!(LoopbackBlock::take("127.1").is_err());
}

/// Set for the helper process of [`a_block_is_held_across_processes_until_its_holder_dies`].
const HOLD_ENV: &str = "TEST_SUPPORT_HOLD_BLOCK";

/// Not a test on its own: run in a child process, it takes a block, reports it and waits to
/// be killed.
#[test]
#[ignore = "helper, run by a_block_is_held_across_processes_until_its_holder_dies"]
fn helper_hold_block() {
    if std::env::var_os(HOLD_ENV).is_none() {
        return;
    }
    let block = LoopbackBlock::allocate();
    println!("BLOCK={}", block.prefix());
    std::thread::sleep(Duration::from_secs(120));
}

#[tokio::test]
async fn a_block_is_held_across_processes_until_its_holder_dies() {
    let exe = std::env::current_exe().expect("test binary");
    let mut holder = std::process::Command::new(exe)
        .args(["--exact", "helper_hold_block", "--ignored", "--nocapture"])
        .env(HOLD_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn helper");
    let stdout = holder.stdout.take().expect("stdout");
    let prefix = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("BLOCK=").map(str::to_string))
        .expect("the helper reports its block");
    assert!(
        LoopbackBlock::take(&prefix).expect("take").is_none(),
        "{prefix} is held by the other process"
    );
    // SIGKILL: no destructor runs; the kernel releases the lock with the process.
    holder.kill().expect("kill helper");
    holder.wait().expect("reap helper");
    let block = eventually(Duration::from_secs(10), async || {
        LoopbackBlock::take(&prefix)
    })
    .await
    .expect("take")
    .expect("free once its holder is dead");
    assert_eq!(block.prefix(), prefix);
}
