//! Lambda Runtime API 2018-06-01 on 127.0.0.1:9001, as AWS serves it: one
//! handler per route, the request validated against [`state::RuntimeState`]
//! before anything changes, Lambda's status codes and error shapes.

pub mod state;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use flint_proto::agent::v1::{
    agent_message::Kind, AgentMessage, InitDone, InitError, InvokeError, InvokeResponse,
    RestoreDone, RestoreError,
};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::channel::HostSink;
use crate::memory::max_used_kb as max_memory_used_kb;
use crate::runtime::CurrentRequest;
use state::{Event, Next, OnResume, RuntimeState, StateError, MAX_RESPONSE};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeApiError {
    #[error("binding the Runtime API listener failed")]
    Bind(#[source] std::io::Error),
}

const PREFIX: &str = "/2018-06-01/runtime";

/// The state shared by all connections of the Runtime API.
pub struct RuntimeApi {
    inner: Mutex<Inner>,
    sink: HostSink,
    current: CurrentRequest,
    init_started: Mutex<Instant>,
}

struct Inner {
    state: RuntimeState,
    /// The parked `next` call, if any.
    waiter: Option<oneshot::Sender<Event>>,
    /// The parked `restore/next` call, if any.
    restore_waiter: Option<oneshot::Sender<()>>,
    restore_started: Option<Instant>,
}

type Reply = Response<Full<Bytes>>;

fn json(status: u16, body: serde_json::Value) -> Reply {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response parts are valid")
}

fn accepted() -> Reply {
    json(202, serde_json::json!({"status": "OK"}))
}

fn rejected(e: &StateError) -> Reply {
    json(
        e.status(),
        serde_json::json!({"errorMessage": e.to_string(), "errorType": e.error_type()}),
    )
}

fn not_found() -> Reply {
    json(
        404,
        serde_json::json!({"errorMessage": "Not Found", "errorType": "NotFound"}),
    )
}

impl RuntimeApi {
    pub fn new(sink: HostSink, current: CurrentRequest) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                state: RuntimeState::default(),
                waiter: None,
                restore_waiter: None,
                restore_started: None,
            }),
            sink,
            current,
            init_started: Mutex::new(Instant::now()),
        })
    }

    /// Marks the start of init (the moment the runtime is started).
    pub fn init_started(&self) {
        *self.init_started.lock().expect("lock") = Instant::now();
    }

    fn init_elapsed_us(&self) -> u64 {
        self.init_started
            .lock()
            .expect("lock")
            .elapsed()
            .as_micros() as u64
    }

    /// Binds 127.0.0.1:9001 and serves until the process ends.
    pub async fn bind(self: &Arc<Self>) -> Result<(), RuntimeApiError> {
        let listener = TcpListener::bind(crate::runtime::RUNTIME_API)
            .await
            .map_err(RuntimeApiError::Bind)?;
        let api = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let api = api.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let api = api.clone();
                        async move { Ok::<_, Infallible>(api.route(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(())
    }

    /// An event from the host.
    pub fn deliver(&self, ev: Event) {
        let mut inner = self.inner.lock().expect("lock");
        if let Some(ev) = inner.state.deliver(ev) {
            match inner.waiter.take() {
                Some(tx) => {
                    if let Err(ev) = tx.send(ev) {
                        // The parked caller went away: keep the event for the next one.
                        inner.state.requeue(ev);
                    }
                }
                None => inner.state.requeue(ev),
            }
        }
    }

    /// The host restored this VM from a snapshot and resumed it.
    pub fn resume(&self) {
        let mut inner = self.inner.lock().expect("lock");
        match inner.state.resume() {
            OnResume::Nothing => {}
            OnResume::Ready => self.sink.send(AgentMessage {
                kind: Some(Kind::RestoreDone(RestoreDone {
                    restore_duration_us: 0,
                })),
            }),
            OnResume::ReleaseRestore => {
                inner.restore_started = Some(Instant::now());
                if let Some(tx) = inner.restore_waiter.take() {
                    let _ = tx.send(());
                }
            }
        }
    }

    async fn route(&self, req: Request<Incoming>) -> Reply {
        let path = req.uri().path().to_string();
        let Some(rest) = path.strip_prefix(PREFIX) else {
            return not_found();
        };
        let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        match (req.method(), parts.as_slice()) {
            (&Method::GET, ["invocation", "next"]) => self.next().await,
            (&Method::POST, ["invocation", id, "response"]) => {
                let id = id.to_string();
                self.response(&id, req).await
            }
            (&Method::POST, ["invocation", id, "error"]) => {
                let id = id.to_string();
                self.error(&id, req).await
            }
            (&Method::POST, ["init", "error"]) => self.init_error(req).await,
            (&Method::GET, ["restore", "next"]) => self.restore_next().await,
            (&Method::POST, ["restore", "error"]) => self.restore_error(req).await,
            (_, ["invocation", "next"])
            | (_, ["invocation", _, "response" | "error"])
            | (_, ["init", "error"])
            | (_, ["restore", "next" | "error"]) => json(
                405,
                serde_json::json!({"errorMessage": "Method Not Allowed", "errorType": "MethodNotAllowed"}),
            ),
            _ => not_found(),
        }
    }

    /// `GET /runtime/restore/next`: after init, the runtime waits here
    /// (Lambda SnapStart) until the snapshot is restored.
    async fn restore_next(&self) -> Reply {
        let rx = {
            let mut inner = self.inner.lock().expect("lock");
            if let Err(e) = inner.state.restore_next() {
                return rejected(&e);
            }
            let (tx, rx) = oneshot::channel();
            inner.restore_waiter = Some(tx);
            rx
        };
        crate::runtime::drain_output().await;
        self.sink.send(AgentMessage {
            kind: Some(Kind::InitDone(InitDone {
                init_duration_us: self.init_elapsed_us(),
            })),
        });
        match rx.await {
            Ok(()) => Response::builder()
                .status(StatusCode::OK)
                .header("Content-Type", "application/json")
                .body(Full::new(Bytes::new()))
                .expect("static response parts are valid"),
            Err(_) => json(
                500,
                serde_json::json!({"errorMessage": "agent shutting down", "errorType": "Runtime.ExitError"}),
            ),
        }
    }

    /// `POST /runtime/restore/error`: the after-restore hooks failed.
    async fn restore_error(&self, req: Request<Incoming>) -> Reply {
        let error_type = header(&req, "Lambda-Runtime-Function-Error-Type");
        let body = match read_body(req).await {
            Ok(b) => b,
            Err(e) => return e.reply(),
        };
        if let Err(e) = self.inner.lock().expect("lock").state.restore_error() {
            return rejected(&e);
        }
        let (error_type, payload) = error_document(error_type, &body);
        crate::runtime::drain_output().await;
        self.sink.send(AgentMessage {
            kind: Some(Kind::RestoreError(RestoreError {
                error_type,
                payload,
            })),
        });
        accepted()
    }

    /// `GET /runtime/invocation/next`: long poll for the next event.
    async fn next(&self) -> Reply {
        let (milestones, ready, restore_started) = {
            let mut inner = self.inner.lock().expect("lock");
            let started = inner.restore_started;
            if inner.waiter.as_ref().is_some_and(|tx| tx.is_closed()) {
                inner.waiter = None;
                inner.state.abandon_wait();
            }
            match inner.state.next() {
                Err(e) => return rejected(&e),
                Ok((m, Next::Event(ev))) => (m, Ok(ev), started),
                Ok((m, Next::Wait)) => {
                    let (tx, rx) = oneshot::channel();
                    inner.waiter = Some(tx);
                    (m, Err(rx), started)
                }
            }
        };
        if milestones.ends_init {
            crate::runtime::drain_output().await;
            self.sink.send(AgentMessage {
                kind: Some(Kind::InitDone(InitDone {
                    init_duration_us: self.init_elapsed_us(),
                })),
            });
        }
        if milestones.ends_restore {
            crate::runtime::drain_output().await;
            self.sink.send(AgentMessage {
                kind: Some(Kind::RestoreDone(RestoreDone {
                    restore_duration_us: restore_started
                        .map(|t| t.elapsed().as_micros() as u64)
                        .unwrap_or(0),
                })),
            });
        }
        let ev = match ready {
            Ok(ev) => ev,
            Err(rx) => match rx.await {
                Ok(ev) => ev,
                Err(_) => {
                    return json(
                        500,
                        serde_json::json!({"errorMessage": "agent shutting down", "errorType": "Runtime.ExitError"}),
                    )
                }
            },
        };
        *self.current.lock().expect("lock") = ev.request_id.clone();
        let mut b = Response::builder()
            .status(StatusCode::OK)
            .header("Content-Type", "application/json")
            .header("Lambda-Runtime-Aws-Request-Id", &ev.request_id)
            .header(
                "Lambda-Runtime-Deadline-Ms",
                ev.deadline_unix_ms.to_string(),
            )
            .header(
                "Lambda-Runtime-Invoked-Function-Arn",
                &ev.invoked_function_arn,
            )
            .header("Lambda-Runtime-Trace-Id", &ev.trace_id);
        if !ev.client_context.is_empty() {
            b = b.header("Lambda-Runtime-Client-Context", &ev.client_context);
        }
        if !ev.cognito_identity.is_empty() {
            b = b.header("Lambda-Runtime-Cognito-Identity", &ev.cognito_identity);
        }
        b.body(Full::new(Bytes::from(ev.payload)))
            .unwrap_or_else(|_| json(500, serde_json::json!({"errorMessage": "bad event headers", "errorType": "Runtime.Error"})))
    }

    /// `POST /runtime/invocation/{id}/response`.
    async fn response(&self, id: &str, req: Request<Incoming>) -> Reply {
        // Validate the id before reading a body that may be large.
        {
            let inner = self.inner.lock().expect("lock");
            if let Err(e) = inner.state.check(id, "RESPONSE") {
                return rejected(&e);
            }
        }
        let (body, len) = match read_body(req).await {
            Ok(b) => {
                let len = b.len();
                (b, len)
            }
            Err(BodyError::TooLarge) => (Bytes::new(), MAX_RESPONSE + 1),
            // Nothing was received: the invocation stays open for the
            // runtime to answer again (or time out).
            Err(e @ BodyError::Unreadable(_)) => return e.reply(),
        };
        let result = self.inner.lock().expect("lock").state.respond(id, len);
        crate::runtime::drain_output().await;
        let mem = max_memory_used_kb();
        match result {
            Ok(()) => {
                self.sink.send(AgentMessage {
                    kind: Some(Kind::Response(InvokeResponse {
                        request_id: id.into(),
                        payload: body.to_vec(),
                        max_memory_used_kb: mem,
                    })),
                });
                accepted()
            }
            Err(e @ StateError::PayloadTooLarge) => {
                let doc = serde_json::json!({
                    "errorMessage": format!("Response payload size exceeded maximum allowed payload size ({MAX_RESPONSE} bytes)."),
                    "errorType": "Function.ResponseSizeTooLarge",
                });
                self.sink.send(AgentMessage {
                    kind: Some(Kind::Error(InvokeError {
                        request_id: id.into(),
                        error_type: "Function.ResponseSizeTooLarge".into(),
                        payload: doc.to_string().into_bytes(),
                        max_memory_used_kb: mem,
                        unhandled: true,
                    })),
                });
                rejected(&e)
            }
            Err(e) => rejected(&e),
        }
    }

    /// `POST /runtime/invocation/{id}/error`.
    async fn error(&self, id: &str, req: Request<Incoming>) -> Reply {
        {
            let inner = self.inner.lock().expect("lock");
            if let Err(e) = inner.state.check(id, "ERROR") {
                return rejected(&e);
            }
        }
        let error_type = header(&req, "Lambda-Runtime-Function-Error-Type");
        let body = match read_body(req).await {
            Ok(b) => b,
            Err(e) => return e.reply(),
        };
        if let Err(e) = self.inner.lock().expect("lock").state.error(id) {
            return rejected(&e);
        }
        let (error_type, payload) = error_document(error_type, &body);
        crate::runtime::drain_output().await;
        self.sink.send(AgentMessage {
            kind: Some(Kind::Error(InvokeError {
                request_id: id.into(),
                error_type,
                payload,
                max_memory_used_kb: max_memory_used_kb(),
                unhandled: false,
            })),
        });
        accepted()
    }

    /// `POST /runtime/init/error`.
    async fn init_error(&self, req: Request<Incoming>) -> Reply {
        let error_type = header(&req, "Lambda-Runtime-Function-Error-Type");
        let body = match read_body(req).await {
            Ok(b) => b,
            Err(e) => return e.reply(),
        };
        if let Err(e) = self.inner.lock().expect("lock").state.init_error() {
            return rejected(&e);
        }
        let (error_type, payload) = error_document(error_type, &body);
        crate::runtime::drain_output().await;
        self.sink.send(AgentMessage {
            kind: Some(Kind::InitError(InitError {
                error_type,
                payload,
                init_duration_us: self.init_elapsed_us(),
            })),
        });
        accepted()
    }
}

/// One request of the agent to its own Runtime API, on a new connection,
/// as a runtime's first request after a restore comes (a spare's warm-up,
/// `Warm`). The path is none of the API's: the answer is a 404 and no state
/// changes. Bounded: a spare that cannot do it is still a spare.
pub async fn warm_up() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(crate::runtime::RUNTIME_API).await?;
        stream.set_nodelay(true)?;
        stream
            .write_all(
                format!(
                    "GET {PREFIX}/warm-up HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    crate::runtime::RUNTIME_API
                )
                .as_bytes(),
            )
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    match tokio::time::timeout(std::time::Duration::from_secs(2), exchange).await {
        Ok(Ok(answer)) if answer.starts_with(b"HTTP/1.1 404") => {}
        Ok(Ok(answer)) => eprintln!(
            "flint-agent: warm-up: unexpected answer {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(40)])
        ),
        Ok(Err(e)) => eprintln!("flint-agent: warm-up: {e}"),
        Err(_) => eprintln!("flint-agent: warm-up: no answer within 2 s"),
    }
}

fn header(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Why a request's body could not be taken.
enum BodyError {
    /// Over [`MAX_RESPONSE`]: 413, as AWS answers.
    TooLarge,
    /// The connection broke or the framing was bad: 500, as AWS answers.
    Unreadable(String),
}

impl BodyError {
    fn reply(&self) -> Reply {
        match self {
            BodyError::TooLarge => rejected(&StateError::PayloadTooLarge),
            BodyError::Unreadable(why) => json(
                500,
                serde_json::json!({
                    "errorMessage": format!("Failed to read the request body: {why}"),
                    "errorType": "InternalServerError",
                }),
            ),
        }
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, BodyError> {
    match Limited::new(req.into_body(), MAX_RESPONSE).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
        Err(e) => Err(BodyError::Unreadable(e.to_string())),
    }
}

/// The error document sent to the invoker: the runtime's JSON if it is an
/// object, else one built from what was posted. The type comes from the
/// header, then the document, then `Unhandled`.
pub fn error_document(header_type: Option<String>, body: &[u8]) -> (String, Vec<u8>) {
    let parsed: Option<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_slice(body).ok();
    match parsed {
        Some(doc) => {
            let error_type = header_type
                .or_else(|| {
                    doc.get("errorType")
                        .and_then(|v| v.as_str())
                        .map(str::to_string)
                })
                .unwrap_or_else(|| "Unhandled".into());
            (error_type, body.to_vec())
        }
        None => {
            let error_type = header_type.unwrap_or_else(|| "Unhandled".into());
            let doc = serde_json::json!({
                "errorMessage": String::from_utf8_lossy(body),
                "errorType": error_type,
            });
            (error_type, doc.to_string().into_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_document_keeps_runtime_json() {
        let body = br#"{"errorMessage":"boom","errorType":"ValueError","stackTrace":[]}"#;
        let (t, p) = error_document(None, body);
        assert_eq!(t, "ValueError");
        assert_eq!(p, body.to_vec());
        let (t, _) = error_document(Some("Custom".into()), body);
        assert_eq!(t, "Custom");
    }

    #[test]
    fn error_document_wraps_plain_text() {
        let (t, p) = error_document(Some("Runtime.Crash".into()), b"it broke");
        assert_eq!(t, "Runtime.Crash");
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["errorMessage"], "it broke");
        assert_eq!(v["errorType"], "Runtime.Crash");
    }
}
