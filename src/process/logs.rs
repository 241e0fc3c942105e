//! Child output capture: `state/logs/<name>.log`, rotated, plus an in-memory tail.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::broadcast;

use crate::state::Timestamp;

/// Lines kept in memory per workspace.
pub const DEFAULT_TAIL_LINES: usize = 1000;
/// A log file is rotated past this size (10 MiB), keeping three files.
const ROTATE_BYTES: u64 = 10 << 20;
const KEEP_FILES: usize = 3;
/// Longer lines are cut to this many bytes.
const MAX_LINE_BYTES: usize = 16 << 10;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One captured line.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub ts: Timestamp,
    pub stream: Stream,
    pub line: String,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    /// Lines pushed so far; each tail entry carries its number.
    pushed: u64,
    tail: VecDeque<(u64, LogLine)>,
}

/// Where a workspace's child output goes; cheap to clone.
///
/// Appends are small writes under a mutex that only the output pumps and
/// log readers take, never a spawn or a probe.
#[derive(Debug, Clone)]
pub struct LogSink {
    inner: Arc<Mutex<Inner>>,
    follow: broadcast::Sender<LogLine>,
}

impl LogSink {
    /// Opens (appends to) `<dir>/<name>.log`; the folder is created.
    pub fn open(dir: &Path, name: &str) -> LogSink {
        let path = dir.join(format!("{name}.log"));
        let _ = std::fs::create_dir_all(dir);
        let file = OpenOptions::new().create(true).append(true).open(&path);
        if let Err(e) = &file {
            tracing::warn!(workspace = name, path = %path.display(), "opening log file: {e}");
        }
        let file = file.ok();
        let size = file.as_ref().and_then(|f| f.metadata().ok()).map_or(0, |m| m.len());
        let (follow, _) = broadcast::channel(256);
        LogSink {
            inner: Arc::new(Mutex::new(Inner { path, file, size, pushed: 0, tail: VecDeque::with_capacity(64) })),
            follow,
        }
    }

    pub fn push(&self, stream: Stream, line: String) {
        let line = LogLine { ts: Timestamp::now(), stream, line };
        let mut inner = self.inner.lock().unwrap();
        let text = format!(
            "{} {} {}\n",
            line.ts,
            match stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            },
            line.line
        );
        if inner.size + text.len() as u64 > ROTATE_BYTES {
            inner.rotate();
        }
        if let Some(file) = inner.file.as_mut() {
            if file.write_all(text.as_bytes()).is_ok() {
                inner.size += text.len() as u64;
            }
        }
        if inner.tail.len() == DEFAULT_TAIL_LINES {
            inner.tail.pop_front();
        }
        inner.pushed += 1;
        let n = inner.pushed;
        inner.tail.push_back((n, line.clone()));
        drop(inner);
        let _ = self.follow.send(line);
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        let inner = self.inner.lock().unwrap();
        inner.tail.iter().skip(inner.tail.len().saturating_sub(n)).map(|(_, l)| l.clone()).collect()
    }

    /// A mark for [`Self::stderr_tail`]: lines pushed after it are newer.
    pub fn mark(&self) -> u64 {
        self.inner.lock().unwrap().pushed
    }

    /// The last `n` stderr lines pushed after `since`, for `lastError.stderrTail`.
    pub fn stderr_tail(&self, since: u64, n: usize) -> Vec<String> {
        let inner = self.inner.lock().unwrap();
        let mut lines: Vec<String> = inner
            .tail
            .iter()
            .rev()
            .take_while(|(seq, _)| *seq > since)
            .map(|(_, l)| l)
            .filter(|l| l.stream == Stream::Stderr)
            .take(n)
            .map(|l| l.line.clone())
            .collect();
        lines.reverse();
        lines
    }

    /// Lines pushed from now on.
    pub fn follow(&self) -> broadcast::Receiver<LogLine> {
        self.follow.subscribe()
    }

    /// Copies `reader` into the sink line by line until EOF.
    ///
    /// Bytes that are not UTF-8 are replaced; lines over 16 KiB are cut.
    pub async fn pump(self, reader: impl AsyncRead + Unpin, stream: Stream) {
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        buf.pop();
                    }
                    buf.truncate(MAX_LINE_BYTES);
                    self.push(stream, String::from_utf8_lossy(&buf).into_owned());
                }
            }
        }
    }
}

impl Inner {
    /// `x.log` -> `x.log.1` -> `x.log.2`; the oldest is dropped.
    fn rotate(&mut self) {
        self.file = None;
        for i in (1..KEEP_FILES).rev() {
            let from = if i == 1 { self.path.clone() } else { numbered(&self.path, i - 1) };
            let _ = std::fs::rename(from, numbered(&self.path, i));
        }
        self.file = OpenOptions::new().create(true).append(true).open(&self.path).ok();
        self.size = 0;
    }
}

fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_keeps_tail() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LogSink::open(dir.path(), "w");
        let big = "x".repeat(MAX_LINE_BYTES);
        for _ in 0..(ROTATE_BYTES as usize / big.len() * 2 + 10) {
            sink.push(Stream::Stdout, big.clone());
        }
        sink.push(Stream::Stderr, "boom".into());
        assert!(dir.path().join("w.log.1").exists());
        assert!(dir.path().join("w.log.2").exists());
        assert!(!dir.path().join("w.log.3").exists());
        assert!(std::fs::metadata(dir.path().join("w.log")).unwrap().len() <= ROTATE_BYTES);
        assert_eq!(sink.stderr_tail(0, 5), vec!["boom".to_string()]);
        let mark = sink.mark();
        assert!(sink.stderr_tail(mark, 5).is_empty());
        assert_eq!(sink.tail(2).len(), 2);
    }
}
