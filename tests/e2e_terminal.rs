//! The live table on a terminal, as a user sees it: run under tmux (a real terminal), read
//! back with `capture-pane`.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// A private tmux server (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        let socket = format!("sluice-test-{}-{}", std::process::id(), free_port());
        let tmux = Tmux { socket };
        let status = tmux
            .cmd()
            .args(["new-session", "-d", "-s", "t", "-x", "170", "-y", "50"])
            .arg(format!("{command}; sleep 60"))
            .status()
            .expect("tmux (Debian's tmux package)");
        assert!(status.success());
        tmux
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &self.socket]);
        cmd
    }

    /// The pane's text, without its empty lines.
    fn screen(&self) -> Vec<String> {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "t"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    fn until(&self, what: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out: {what}\n{}",
                screen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

/// A source of known length shows how far it is and the time left while it runs; on Ctrl-C
/// the table gives way to the log lines and one summary (its header once, nothing between
/// it and its rows), where the source stopped before its end shows `stopped`, not `done`,
/// and each sink where its records went.
#[test]
fn the_live_table_shows_progress_and_ctrl_c_leaves_one_clean_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ticks.jsonl");
    let pipeline = dir.path().join("slow.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "name: slow
sources:
  gen:
    type: datagen
    shape: ticks
    count: 1000000
    rate: 2000
    topic: ticks
sinks:
  out:
    type: file
    topics: [ticks]
    path: {}
",
            out.display()
        ),
    )
    .unwrap();
    let tmux = Tmux::start(&format!(
        "{} run {} --state-dir {} --listen none",
        env!("CARGO_BIN_EXE_sluice"),
        pipeline.display(),
        dir.path().join("state").display()
    ));
    let running = tmux.until("the table shows progress", |screen| {
        screen
            .iter()
            .any(|l| l.contains("slow/gen source") && l.contains("% ") && l.contains("left"))
    });
    assert_eq!(
        running
            .iter()
            .filter(|l| l.trim_start().starts_with("component "))
            .count(),
        1,
        "{}",
        running.join("\n")
    );
    tmux.cmd()
        .args(["send-keys", "-t", "t", "C-c"])
        .status()
        .unwrap();
    let ended = tmux.until("the summary", |screen| {
        screen.iter().any(|l| l.starts_with("summary after"))
            && screen.iter().any(|l| l.contains("slow/out sink"))
    });
    let text = ended.join("\n");
    assert_eq!(
        ended
            .iter()
            .filter(|l| l.trim_start().starts_with("component "))
            .count(),
        1,
        "one header:\n{text}"
    );
    let summary = ended
        .iter()
        .position(|l| l.starts_with("summary after"))
        .unwrap();
    let rows = &ended[summary + 1..];
    assert!(rows[0].trim_start().starts_with("component "), "{text}");
    assert!(
        rows[1].contains("slow/gen source") && rows[1].contains("stopped"),
        "{text}"
    );
    assert!(
        rows[2].contains("slow/out sink") && rows[2].contains(&out.display().to_string()),
        "{text}"
    );
    assert!(
        !ended[..summary]
            .iter()
            .any(|l| l.contains("slow/gen source")),
        "no frame left above the summary:\n{text}"
    );
    assert!(
        ended.iter().all(|l| !l.starts_with("  20")),
        "a log line starts where the table was erased, at the line's start:\n{text}"
    );
}
