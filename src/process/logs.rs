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
/// The read buffer of each output pump (two per child).
const PUMP_BUFFER_BYTES: usize = 1 << 10;

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
    /// Live followers' channel, made by the first [`LogSink::follow`] and
    /// dropped once no one follows: its 256 slots cost about 18 KiB, too
    /// much to keep for every workspace that nobody watches.
    follow: Option<broadcast::Sender<LogLine>>,
}

/// Where a workspace's child output goes; cheap to clone.
///
/// Appends are small writes under a mutex that only the output pumps and
/// log readers take, never a spawn or a probe.
#[derive(Debug, Clone)]
pub struct LogSink {
    inner: Arc<Mutex<Inner>>,
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
        LogSink {
            inner: Arc::new(Mutex::new(Inner { path, file, size, pushed: 0, tail: VecDeque::new(), follow: None })),
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
        if let Some(follow) = inner.follow.take() {
            if follow.send(line.clone()).is_ok() {
                inner.follow = Some(follow);
            }
        }
        inner.tail.push_back((n, line));
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
        let mut inner = self.inner.lock().unwrap();
        inner.follow.get_or_insert_with(|| broadcast::channel(256).0).subscribe()
    }

    /// Copies `reader` into the sink line by line until EOF.
    ///
    /// Bytes that are not UTF-8 are replaced; lines over 16 KiB are cut, and
    /// the rest of such a line is read past, never held: a child that
    /// writes without a newline cannot grow the daemon. Reads go through a
    /// 1 KiB buffer, the memory a quiet child's pump holds while it waits.
    pub async fn pump(self, reader: impl AsyncRead + Unpin, stream: Stream) {
        let mut reader = BufReader::with_capacity(PUMP_BUFFER_BYTES, reader);
        let mut line = Vec::new();
        loop {
            let chunk = match reader.fill_buf().await {
                Ok([]) | Err(_) => break,
                Ok(chunk) => chunk,
            };
            let newline = chunk.iter().position(|b| *b == b'\n');
            let part = &chunk[..newline.unwrap_or(chunk.len())];
            line.extend_from_slice(&part[..part.len().min(MAX_LINE_BYTES - line.len())]);
            let used = newline.map_or(chunk.len(), |at| at + 1);
            reader.consume(used);
            if newline.is_some() {
                self.push_line(stream, &mut line);
            }
        }
        if !line.is_empty() {
            self.push_line(stream, &mut line);
        }
    }

    /// Pushes the bytes of one line (without its `\r`) and empties `line`.
    fn push_line(&self, stream: Stream, line: &mut Vec<u8>) {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        self.push(stream, String::from_utf8_lossy(line).into_owned());
        line.clear();
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

    #[tokio::test]
    async fn a_pump_cuts_long_lines_and_keeps_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LogSink::open(dir.path(), "w");
        let mut output = vec![b'x'; 100 << 10];
        output.extend_from_slice(b"\r\nnext\r\n\nlast without newline");
        sink.clone().pump(&output[..], Stream::Stdout).await;
        let lines: Vec<String> = sink.tail(10).into_iter().map(|l| l.line).collect();
        assert_eq!(lines.len(), 4, "{:?}", lines.iter().map(String::len).collect::<Vec<_>>());
        assert_eq!(lines[0], "x".repeat(MAX_LINE_BYTES));
        assert_eq!(&lines[1..], ["next", "", "last without newline"]);
    }

    #[test]
    fn followers_get_new_lines_and_the_channel_lives_only_while_followed() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LogSink::open(dir.path(), "w");
        sink.push(Stream::Stdout, "before".into());
        assert!(sink.inner.lock().unwrap().follow.is_none(), "no channel until someone follows");
        let (mut a, mut b) = (sink.follow(), sink.follow());
        sink.push(Stream::Stderr, "after".into());
        for follower in [&mut a, &mut b] {
            let line = follower.try_recv().unwrap();
            assert_eq!((line.stream, line.line.as_str()), (Stream::Stderr, "after"));
            assert!(follower.try_recv().is_err(), "only lines pushed after following");
        }
        drop((a, b));
        sink.push(Stream::Stdout, "unfollowed".into());
        assert!(sink.inner.lock().unwrap().follow.is_none(), "dropped with its last follower");
        let mut c = sink.follow();
        sink.push(Stream::Stdout, "again".into());
        assert_eq!(c.try_recv().unwrap().line, "again");
        assert_eq!(sink.tail(10).len(), 4);
    }
}
