//! Function logs: one stream per instance, as Lambda's log streams, in files
//! under the data directory. Each line carries a timestamp and the request id
//! where known.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

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

#[derive(Clone)]
pub struct FunctionLogs {
    dir: PathBuf,
}

impl FunctionLogs {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
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
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| LogsError::Open(path.clone(), e))?;
        Ok(LogStream {
            name,
            path,
            inner: Arc::new(Mutex::new(StreamInner {
                file,
                capture: None,
            })),
        })
    }

    pub fn function_dir(&self, function: &str) -> PathBuf {
        self.dir.join(function)
    }
}

struct StreamInner {
    file: std::fs::File,
    /// The current invocation's log, kept for `LogType: Tail`.
    capture: Option<Vec<u8>>,
}

/// One instance's log stream. Cheap to clone.
#[derive(Clone)]
pub struct LogStream {
    pub name: String,
    pub path: PathBuf,
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
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(inner.file, "{}\t{rid}\t{line}", rfc3339(SystemTime::now()));
        if let Some(c) = inner.capture.as_mut() {
            c.extend_from_slice(line.as_bytes());
            c.push(b'\n');
            // Keep a bounded buffer; only the tail is ever returned.
            if c.len() > 4 * TAIL_BYTES {
                let cut = c.len() - TAIL_BYTES;
                c.drain(..cut);
            }
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

    #[test]
    fn lines_go_to_file_and_capture_keeps_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let logs = FunctionLogs::new(dir.path().to_path_buf());
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
        let text = std::fs::read_to_string(&s.path).unwrap();
        assert_eq!(text.lines().count(), 1001);
        assert!(text.lines().nth(1).unwrap().contains("\treq-1\tline 0"));
    }
}
