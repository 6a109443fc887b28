//! Function logs: one stream per instance, as Lambda's log streams, in files
//! under the data directory. Each line carries a timestamp and the request id
//! where known. Streams rotate by size; old files go after the retention
//! period; new lines are also published for followers.
//!
//! Why one file of 600 lines: writing, rotation, retention and following
//! share one lock and one file layout, and their tests need all of it.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

use crate::time::{date_path, rfc3339};

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("opening log stream {0} failed")]
    Open(PathBuf, #[source] std::io::Error),
}

/// Lambda's `LogResult` holds the last 4 KB of an invocation's log.
pub const TAIL_BYTES: usize = 4096;
/// Longest line kept; longer ones are cut (a guest can print anything).
const MAX_LINE: usize = 256 * 1024;

/// Size and age limits of the log files.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    /// A stream's file is rotated (to `.1`, replacing the previous one) past this size.
    pub max_stream_bytes: u64,
    /// Files not written for this long are deleted.
    pub retention: Duration,
    /// Bytes one function's logs may take; past it its oldest are dropped.
    pub max_function_bytes: u64,
    /// Bytes all logs may take; past it the node's oldest are dropped.
    pub max_node_bytes: u64,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            max_stream_bytes: 16 * 1024 * 1024,
            retention: Duration::from_secs(7 * 24 * 3600),
            max_function_bytes: 128 * 1024 * 1024,
            max_node_bytes: 2 * 1024 * 1024 * 1024,
        }
    }
}

/// Bytes stored and dropped, per function and for the node.
#[derive(Debug, Default)]
struct Usage {
    stored: HashMap<String, u64>,
    stored_total: u64,
    dropped: HashMap<String, u64>,
    dropped_total: u64,
}

impl Usage {
    fn add(&mut self, function: &str, n: u64) {
        *self.stored.entry(function.to_string()).or_default() += n;
        self.stored_total += n;
    }

    /// `n` bytes of `function` left the disk; `dropped`: before their time.
    fn remove(&mut self, function: &str, n: u64, dropped: bool) {
        if let Some(v) = self.stored.get_mut(function) {
            *v = v.saturating_sub(n);
        }
        self.stored_total = self.stored_total.saturating_sub(n);
        if dropped && n > 0 {
            *self.dropped.entry(function.to_string()).or_default() += n;
            self.dropped_total += n;
        }
    }
}

/// What every stream of a node shares: the limits, the usage, and the
/// files open for writing (truncated rather than deleted when dropped).
struct Shared {
    dir: PathBuf,
    limits: LogLimits,
    usage: Mutex<Usage>,
    open: Mutex<HashMap<PathBuf, Weak<Mutex<StreamInner>>>>,
}

impl Shared {
    /// Drops the oldest files (of `function` while it is over its cap, then
    /// of the node while it is over the node's) until both fit.
    fn enforce_caps(&self, function: &str) {
        for _ in 0..10_000 {
            let scope = {
                let u = self.usage.lock().unwrap_or_else(|p| p.into_inner());
                let mine = u.stored.get(function).copied().unwrap_or(0);
                if mine > self.limits.max_function_bytes {
                    Some(Some(function))
                } else if u.stored_total > self.limits.max_node_bytes {
                    Some(None)
                } else {
                    None
                }
            };
            let Some(scope) = scope else {
                return;
            };
            let Some((victim_fn, path, size)) = self.oldest(scope) else {
                return;
            };
            let live = self
                .open
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&path)
                .and_then(Weak::upgrade);
            let freed = match live {
                // A stream still writes there: empty it in place.
                Some(inner) => {
                    let mut inner = inner.lock().unwrap_or_else(|p| p.into_inner());
                    let n = inner.written;
                    if inner.file.set_len(0).is_ok() {
                        inner.written = 0;
                        n
                    } else {
                        0
                    }
                }
                None => match std::fs::remove_file(&path) {
                    Ok(()) => size,
                    Err(_) => 0,
                },
            };
            self.usage
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&victim_fn, freed, true);
            if freed == 0 {
                return;
            }
        }
    }

    /// The least recently written non-empty file of `function`, or of any
    /// function.
    fn oldest(&self, function: Option<&str>) -> Option<(String, PathBuf, u64)> {
        let dirs: Vec<(String, PathBuf)> = match function {
            Some(f) => vec![(f.to_string(), self.dir.join(f))],
            None => std::fs::read_dir(&self.dir)
                .ok()?
                .flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect(),
        };
        let mut best: Option<(SystemTime, String, PathBuf, u64)> = None;
        for (f, d) in dirs {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let Ok(m) = e.metadata() else { continue };
                if !m.is_file() || m.len() == 0 {
                    continue;
                }
                let t = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                if best.as_ref().is_none_or(|b| t < b.0) {
                    best = Some((t, f.clone(), e.path(), m.len()));
                }
            }
        }
        best.map(|(_, f, p, n)| (f, p, n))
    }
}

/// One log line, as read back or followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub timestamp: String,
    pub function: String,
    pub stream: String,
    pub request_id: String,
    pub message: String,
}

#[derive(Clone)]
pub struct FunctionLogs {
    dir: PathBuf,
    limits: LogLimits,
    live: broadcast::Sender<LogRecord>,
    shared: Arc<Shared>,
}

impl FunctionLogs {
    pub fn new(dir: PathBuf, limits: LogLimits) -> Self {
        let (live, _) = broadcast::channel(4096);
        let mut usage = Usage::default();
        if let Ok(functions) = std::fs::read_dir(&dir) {
            for f in functions.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                for e in std::fs::read_dir(f.path()).into_iter().flatten().flatten() {
                    usage.add(&name, e.metadata().map(|m| m.len()).unwrap_or(0));
                }
            }
        }
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            limits,
            usage: Mutex::new(usage),
            open: Mutex::new(HashMap::new()),
        });
        Self {
            dir,
            limits,
            live,
            shared,
        }
    }

    /// Bytes of logs on disk: `function`'s, or the node's.
    pub fn stored_bytes(&self, function: Option<&str>) -> u64 {
        let u = self.shared.usage.lock().unwrap_or_else(|p| p.into_inner());
        match function {
            Some(f) => u.stored.get(f).copied().unwrap_or(0),
            None => u.stored_total,
        }
    }

    /// Bytes of logs dropped before their retention ran out (caps and
    /// rotation): `function`'s, or the node's.
    pub fn dropped_bytes(&self, function: Option<&str>) -> u64 {
        let u = self.shared.usage.lock().unwrap_or_else(|p| p.into_inner());
        match function {
            Some(f) => u.dropped.get(f).copied().unwrap_or(0),
            None => u.dropped_total,
        }
    }

    /// Lambda's log group name for a function.
    pub fn group(function: &str) -> String {
        format!("/aws/lambda/{function}")
    }

    /// Opens a new stream for an instance of `function` at `version`.
    pub fn open_stream(
        &self,
        function: &str,
        version: &str,
        instance_id: &str,
    ) -> Result<LogStream, LogsError> {
        let now = SystemTime::now();
        let name = format!("{}/[{version}]{instance_id}", date_path(now));
        let dir = self.dir.join(function);
        let file_name = format!("{}-{instance_id}.log", date_path(now).replace('/', "-"));
        let path = dir.join(file_name);
        std::fs::create_dir_all(&dir).map_err(|e| LogsError::Open(path.clone(), e))?;
        let file = open_append(&path).map_err(|e| LogsError::Open(path.clone(), e))?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        let inner = Arc::new(Mutex::new(StreamInner {
            file,
            written,
            capture: None,
        }));
        {
            let mut open = self.shared.open.lock().unwrap_or_else(|p| p.into_inner());
            open.retain(|_, w| w.strong_count() > 0);
            open.insert(path.clone(), Arc::downgrade(&inner));
        }
        Ok(LogStream {
            name,
            path,
            function: function.to_string(),
            limits: self.limits,
            live: self.live.clone(),
            shared: self.shared.clone(),
            inner,
        })
    }

    /// Lines written from now on, for every function.
    pub fn subscribe(&self) -> broadcast::Receiver<LogRecord> {
        self.live.subscribe()
    }

    /// Every stored line of `function` at or after `since`, oldest first.
    pub fn read(&self, function: &str, since: Option<SystemTime>) -> Vec<LogRecord> {
        let since = since.map(rfc3339);
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.dir.join(function)) else {
            return out;
        };
        for e in rd.flatten() {
            let path = e.path();
            let stream = stream_of(&path);
            let Ok(file) = std::fs::File::open(&path) else {
                continue;
            };
            for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
                let mut parts = line.splitn(3, '\t');
                let (Some(ts), Some(rid), Some(msg)) = (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                if since.as_deref().is_some_and(|s| ts < s) {
                    continue;
                }
                out.push(LogRecord {
                    timestamp: ts.to_string(),
                    function: function.to_string(),
                    stream: stream.clone(),
                    request_id: if rid == "-" {
                        String::new()
                    } else {
                        rid.to_string()
                    },
                    message: msg.to_string(),
                });
            }
        }
        // Timestamps are fixed-width RFC 3339: text order is time order.
        out.sort_by(|a, b| a.timestamp.cmp(&b.timestamp));
        out
    }

    /// Deletes files not written within the retention period. Returns how
    /// many went.
    pub fn enforce_retention(&self) -> usize {
        let cutoff = SystemTime::now() - self.limits.retention;
        let mut n = 0;
        let Ok(functions) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        for f in functions.flatten() {
            let Ok(files) = std::fs::read_dir(f.path()) else {
                continue;
            };
            let function = f.file_name().to_string_lossy().into_owned();
            for e in files.flatten() {
                let Ok(m) = e.metadata() else { continue };
                let old = m.modified().map(|t| t < cutoff).unwrap_or(false);
                if old && std::fs::remove_file(e.path()).is_ok() {
                    self.shared
                        .usage
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&function, m.len(), false);
                    n += 1;
                }
            }
            let _ = std::fs::remove_dir(f.path()); // only if empty
        }
        n
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// The stream a file belongs to: its name without `.log` / `.log.1`.
fn stream_of(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.trim_end_matches(".1")
        .trim_end_matches(".log")
        .to_string()
}

struct StreamInner {
    file: std::fs::File,
    written: u64,
    /// The current invocation's log, kept for `LogType: Tail`.
    capture: Option<Vec<u8>>,
}

/// One instance's log stream. Cheap to clone.
#[derive(Clone)]
pub struct LogStream {
    pub name: String,
    pub path: PathBuf,
    function: String,
    limits: LogLimits,
    live: broadcast::Sender<LogRecord>,
    shared: Arc<Shared>,
    inner: Arc<Mutex<StreamInner>>,
}

impl LogStream {
    /// Appends one line. The file gets `timestamp<TAB>request-id<TAB>line`;
    /// the capture gets the line as the function printed it.
    pub fn line(&self, request_id: &str, line: &str) {
        let line = if line.len() > MAX_LINE {
            let mut end = MAX_LINE;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            &line[..end]
        } else {
            line
        };
        let rid = if request_id.is_empty() {
            "-"
        } else {
            request_id
        };
        let ts = rfc3339(SystemTime::now());
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut replaced = 0;
        if inner.written >= self.limits.max_stream_bytes {
            let rotated = PathBuf::from(format!("{}.1", self.path.display()));
            // The previous rotated file is replaced: its lines are dropped.
            replaced = std::fs::metadata(&rotated).map(|m| m.len()).unwrap_or(0);
            let _ = std::fs::rename(&self.path, rotated);
            if let Ok(f) = open_append(&self.path) {
                inner.file = f;
                inner.written = 0;
            }
        }
        let text = format!("{ts}\t{rid}\t{line}\n");
        let mut added = 0;
        if inner.file.write_all(text.as_bytes()).is_ok() {
            inner.written += text.len() as u64;
            added = text.len() as u64;
        }
        if let Some(c) = inner.capture.as_mut() {
            c.extend_from_slice(line.as_bytes());
            c.push(b'\n');
            // Keep a bounded buffer; only the tail is ever returned.
            if c.len() > 4 * TAIL_BYTES {
                let cut = c.len() - TAIL_BYTES;
                c.drain(..cut);
            }
        }
        drop(inner);
        let over = {
            let mut u = self.shared.usage.lock().unwrap_or_else(|p| p.into_inner());
            u.remove(&self.function, replaced, true);
            u.add(&self.function, added);
            u.stored.get(&self.function).copied().unwrap_or(0) > self.limits.max_function_bytes
                || u.stored_total > self.limits.max_node_bytes
        };
        if over {
            self.shared.enforce_caps(&self.function);
        }
        if self.live.receiver_count() > 0 {
            let _ = self.live.send(LogRecord {
                timestamp: ts,
                function: self.function.clone(),
                stream: stream_of(&self.path),
                request_id: request_id.to_string(),
                message: line.to_string(),
            });
        }
    }

    /// Starts capturing lines for an invocation.
    pub fn start_capture(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).capture = Some(Vec::new());
    }

    /// Stops capturing; returns the last 4 KB captured.
    pub fn take_capture(&self) -> String {
        let c = self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .capture
            .take()
            .unwrap_or_default();
        let mut start = c.len().saturating_sub(TAIL_BYTES);
        while start < c.len() && (c[start] & 0xC0) == 0x80 {
            start += 1; // do not begin inside a UTF-8 sequence
        }
        String::from_utf8_lossy(&c[start..]).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs(dir: &Path, max: u64) -> FunctionLogs {
        FunctionLogs::new(
            dir.to_path_buf(),
            LogLimits {
                max_stream_bytes: max,
                retention: Duration::from_secs(3600),
                ..LogLimits::default()
            },
        )
    }

    #[test]
    fn lines_go_to_file_and_capture_keeps_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let logs = logs(dir.path(), 1 << 30);
        let s = logs.open_stream("f", "$LATEST", "abc").unwrap();
        assert!(s.name.ends_with("/[$LATEST]abc"));
        s.line("", "before capture");
        s.start_capture();
        for i in 0..1000 {
            s.line("req-1", &format!("line {i}"));
        }
        let tail = s.take_capture();
        assert!(tail.len() <= TAIL_BYTES);
        assert!(tail.ends_with("line 999\n"));
        assert!(!tail.contains("before capture"));
        let all = logs.read("f", None);
        assert_eq!(all.len(), 1001);
        assert_eq!(all[1].request_id, "req-1");
        assert_eq!(all[1].message, "line 0");
        assert_eq!(all[0].request_id, "");
    }

    #[test]
    fn streams_rotate_by_size_and_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let logs = logs(dir.path(), 2000);
        let s = logs.open_stream("f", "1", "i1").unwrap();
        for i in 0..100 {
            s.line("r", &format!("message number {i:03}"));
        }
        let files: Vec<_> = std::fs::read_dir(dir.path().join("f"))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(files.len(), 2, "current file and one rotated file");
        let total: u64 = files.iter().map(|f| f.metadata().unwrap().len()).sum();
        assert!(total < 4500, "{total}");
        let back = logs.read("f", None);
        assert!(back.last().unwrap().message.ends_with("099"));
        let future = SystemTime::now() + Duration::from_secs(60);
        assert!(logs.read("f", Some(future)).is_empty());
    }

    #[test]
    fn followers_see_new_lines() {
        let dir = tempfile::tempdir().unwrap();
        let logs = logs(dir.path(), 1 << 20);
        let mut rx = logs.subscribe();
        let s = logs.open_stream("g", "$LATEST", "i2").unwrap();
        s.line("r9", "hello");
        let rec = rx.try_recv().unwrap();
        assert_eq!(
            (
                rec.function.as_str(),
                rec.request_id.as_str(),
                rec.message.as_str()
            ),
            ("g", "r9", "hello")
        );
    }

    #[test]
    fn retention_removes_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let logs = FunctionLogs::new(
            dir.path().to_path_buf(),
            LogLimits {
                max_stream_bytes: 1 << 20,
                retention: Duration::ZERO,
                ..LogLimits::default()
            },
        );
        let s = logs.open_stream("h", "$LATEST", "i3").unwrap();
        s.line("", "x");
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(logs.enforce_retention(), 1);
        assert!(logs.read("h", None).is_empty());
    }

    #[test]
    fn a_flood_keeps_within_the_caps_and_drops_the_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let logs = FunctionLogs::new(
            dir.path().to_path_buf(),
            LogLimits {
                max_stream_bytes: 10_000,
                retention: Duration::from_secs(3600),
                max_function_bytes: 50_000,
                max_node_bytes: 80_000,
            },
        );
        // A quiet function, then a flood from two instances of another.
        let quiet = logs.open_stream("quiet", "$LATEST", "q").unwrap();
        for i in 0..200 {
            quiet.line("", &format!("quiet {i:04}"));
        }
        let quiet_bytes = logs.stored_bytes(Some("quiet"));
        assert!(quiet_bytes > 5_000);
        std::thread::sleep(Duration::from_millis(20));
        let a = logs.open_stream("loud", "$LATEST", "a").unwrap();
        let b = logs.open_stream("loud", "$LATEST", "b").unwrap();
        let line = "x".repeat(100);
        for i in 0..5_000 {
            a.line("r", &format!("a {i:05} {line}"));
            b.line("r", &format!("b {i:05} {line}"));
        }
        let on_disk = |f: &str| -> u64 {
            std::fs::read_dir(dir.path().join(f))
                .unwrap()
                .flatten()
                .map(|e| e.metadata().unwrap().len())
                .sum()
        };
        // The function's cap holds, on disk and in the accounting.
        assert!(on_disk("loud") <= 50_000 + 200, "{}", on_disk("loud"));
        assert_eq!(logs.stored_bytes(Some("loud")), on_disk("loud"));
        // Its own oldest lines went, its newest are kept, and it counts
        // what it lost.
        let back = logs.read("loud", None);
        let newest: Vec<&str> = back
            .iter()
            .rev()
            .take(2)
            .map(|r| r.message.as_str())
            .collect();
        assert!(
            newest
                .iter()
                .any(|m| m.starts_with("a 04999") || m.starts_with("b 04999")),
            "{newest:?}"
        );
        assert!(!back.iter().any(|r| r.message.starts_with("a 00000")));
        let written = 2 * 5_000 * (line.len() as u64 + 40);
        assert!(logs.dropped_bytes(Some("loud")) > written / 2);
        assert_eq!(logs.dropped_bytes(None), logs.dropped_bytes(Some("loud")));
        // The quiet function lost nothing: the node's cap was not reached.
        assert_eq!(logs.stored_bytes(Some("quiet")), quiet_bytes);
        assert_eq!(logs.dropped_bytes(Some("quiet")), 0);
        // More functions push the node past its cap: the node's oldest
        // (the quiet function's) go first.
        for f in ["f1", "f2", "f3", "f4"] {
            let s = logs.open_stream(f, "$LATEST", "t").unwrap();
            for i in 0..200 {
                s.line("", &format!("{f} {i:04} {line}"));
            }
        }
        assert!(logs.stored_bytes(None) <= 80_000 + 200);
        assert!(logs.dropped_bytes(Some("quiet")) > 0);
        // A node that restarts counts what is on disk.
        let again = FunctionLogs::new(dir.path().to_path_buf(), LogLimits::default());
        assert_eq!(again.stored_bytes(None), logs.stored_bytes(None));
    }
}
