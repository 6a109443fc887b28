//! OpenTelemetry traces of invocations, exported over OTLP/gRPC.
//!
//! One trace per invocation: an `Invoke` span with `Admission`, `Start`
//! (with `Boot` / `Restore` / `Init` under it, as X-Ray records a cold
//! start's phases), `Invocation` and `Response` under it. The trace id is
//! the one the runtime receives in `Lambda-Runtime-Trace-Id` (X-Ray's
//! `1-{8 hex}-{24 hex}` is the same 128 bits), and `Parent=` there is the
//! `Invocation` span, so that what the function's code records nests
//! under it. A caller's `traceparent` (W3C) or `X-Amzn-Trace-Id` is
//! continued: its trace id, its span as the parent, its sampling decision.
//!
//! Spans go through a bounded queue to one exporter task: a slow or absent
//! collector costs dropped spans (counted), never a slower invocation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flint_proto::opentelemetry::proto::collector::trace::v1 as collector;
use flint_proto::opentelemetry::proto::common::v1 as common;
use flint_proto::opentelemetry::proto::resource::v1 as resource;
use flint_proto::opentelemetry::proto::trace::v1 as otlp;

use super::ObserveError;

/// Spans waiting for the exporter at most; more are dropped.
pub const QUEUE: usize = 8192;
/// Spans per export request at most.
const BATCH: usize = 512;
/// How long a span waits for a fuller batch.
const FLUSH: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct TraceSettings {
    /// The collector's OTLP/gRPC endpoint, `http://HOST:PORT`.
    pub endpoint: String,
    /// Share of new traces sampled, 0 to 1 (a caller's decision is kept).
    pub sample_ratio: f64,
    /// `service.name` of the exported resource.
    pub service_name: String,
}

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    let r = uuid::Uuid::new_v4();
    out.copy_from_slice(&r.as_bytes()[16 - N..]);
    // Never all zero (an invalid id in both W3C and X-Ray).
    if out.iter().all(|b| *b == 0) {
        out[N - 1] = 1;
    }
    out
}

pub fn new_span_id() -> SpanId {
    random_bytes::<8>()
}

/// The trace an invocation belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: TraceId,
    /// The caller's span, when a caller's context was continued.
    pub parent: Option<SpanId>,
    pub sampled: bool,
}

impl TraceContext {
    /// A new trace: X-Ray's shape, the first 4 bytes the epoch seconds.
    pub fn new(sampled: bool) -> Self {
        let secs = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0);
        let mut trace_id: TraceId = random_bytes::<16>();
        trace_id[..4].copy_from_slice(&secs.to_be_bytes());
        Self {
            trace_id,
            parent: None,
            sampled,
        }
    }

    /// A W3C `traceparent`: `00-{32 hex}-{16 hex}-{2 hex flags}`.
    pub fn from_traceparent(v: &str) -> Option<Self> {
        let parts: Vec<&str> = v.trim().split('-').collect();
        let [version, trace, span, flags] = parts[..] else {
            return None;
        };
        if version.len() != 2 || version == "ff" || flags.len() != 2 {
            return None;
        }
        let trace_id: TraceId = hex_array(trace)?;
        let span: SpanId = hex_array(span)?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == [0; 16] || span == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent: Some(span),
            sampled: flags & 1 == 1,
        })
    }

    /// An X-Ray header: `Root=1-{8 hex}-{24 hex}[;Parent={16 hex}][;Sampled=0|1]`
    /// (a missing `Sampled` is left to the node's sampler: `None`).
    pub fn from_xray(v: &str) -> Option<(Self, Option<bool>)> {
        let mut root = None;
        let mut parent = None;
        let mut sampled = None;
        for part in v.split(';') {
            let (k, val) = part.trim().split_once('=')?;
            match k {
                "Root" => {
                    let rest = val.strip_prefix("1-")?;
                    let (time, id) = rest.split_once('-')?;
                    if time.len() != 8 || id.len() != 24 {
                        return None;
                    }
                    root = Some(hex_array::<16>(&format!("{time}{id}"))?);
                }
                "Parent" => parent = Some(hex_array::<8>(val)?),
                "Sampled" => {
                    sampled = match val {
                        "1" => Some(true),
                        "0" => Some(false),
                        _ => None,
                    }
                }
                _ => {}
            }
        }
        let trace_id = root.filter(|r| *r != [0; 16])?;
        Some((
            Self {
                trace_id,
                parent,
                sampled: sampled.unwrap_or(false),
            },
            sampled,
        ))
    }

    /// What the runtime gets in `Lambda-Runtime-Trace-Id`, with `parent`
    /// the span its work nests under.
    pub fn xray_header(&self, parent: SpanId) -> String {
        let t = hex::encode(self.trace_id);
        format!(
            "Root=1-{}-{};Parent={};Sampled={}",
            &t[..8],
            &t[8..],
            hex::encode(parent),
            u8::from(self.sampled)
        )
    }

    /// The W3C form of the trace id.
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }
}

fn hex_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let v = hex::decode(s).ok()?;
    v.try_into().ok()
}

/// A caller's trace context, as a caller may send it: `traceparent`
/// first, then `X-Amzn-Trace-Id`. `None` for neither (or neither valid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    pub ctx: TraceContext,
    /// The caller decided whether it is sampled.
    pub decided: bool,
}

impl Incoming {
    pub fn parse(traceparent: Option<&str>, xray: Option<&str>) -> Option<Self> {
        if let Some(ctx) = traceparent.and_then(TraceContext::from_traceparent) {
            return Some(Self { ctx, decided: true });
        }
        let (ctx, sampled) = xray.and_then(TraceContext::from_xray)?;
        Some(Self {
            ctx,
            decided: sampled.is_some(),
        })
    }
}

/// An attribute value of a span.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// One finished span.
#[derive(Debug, Clone)]
pub struct SpanData {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub name: &'static str,
    pub server: bool,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Attr)>,
    /// The span failed, with this message.
    pub error: Option<String>,
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn attr(k: &str, v: Attr) -> common::KeyValue {
    use common::any_value::Value;
    let value = match v {
        Attr::Str(s) => Value::StringValue(s),
        Attr::Int(i) => Value::IntValue(i),
        Attr::Bool(b) => Value::BoolValue(b),
    };
    common::KeyValue {
        key: k.to_string(),
        value: Some(common::AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

impl SpanData {
    fn into_otlp(self) -> otlp::Span {
        otlp::Span {
            trace_id: self.trace_id.to_vec(),
            span_id: self.span_id.to_vec(),
            parent_span_id: self.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: self.name.to_string(),
            kind: if self.server {
                otlp::span::SpanKind::Server as i32
            } else {
                otlp::span::SpanKind::Internal as i32
            },
            start_time_unix_nano: unix_nanos(self.start),
            end_time_unix_nano: unix_nanos(self.end).max(unix_nanos(self.start)),
            attributes: self
                .attributes
                .into_iter()
                .map(|(k, v)| attr(k, v))
                .collect(),
            status: Some(match self.error {
                Some(message) => otlp::Status {
                    message,
                    code: otlp::status::StatusCode::Error as i32,
                },
                None => otlp::Status {
                    message: String::new(),
                    code: otlp::status::StatusCode::Unset as i32,
                },
            }),
            ..Default::default()
        }
    }
}

/// Samples new traces and hands finished spans to the exporter.
pub struct Tracer {
    settings: TraceSettings,
    queue: tokio::sync::mpsc::Sender<SpanData>,
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
}

impl Tracer {
    /// Checks the settings and starts the exporter task (on the current
    /// tokio runtime); the collector is connected to lazily.
    pub fn start(settings: TraceSettings) -> Result<Arc<Self>, ObserveError> {
        if !(0.0..=1.0).contains(&settings.sample_ratio) {
            return Err(ObserveError::Invalid {
                field: "tracing.sample_ratio",
                rule: format!("must be from 0 to 1 (got {})", settings.sample_ratio),
            });
        }
        let endpoint = tonic::transport::Endpoint::from_shared(settings.endpoint.clone())
            .map_err(|e| ObserveError::Endpoint(settings.endpoint.clone(), e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10));
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let tracer = Arc::new(Self {
            settings,
            queue: tx,
            exported: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let channel = endpoint.connect_lazy();
        tokio::spawn(export(Arc::downgrade(&tracer), channel, rx));
        Ok(tracer)
    }

    pub fn settings(&self) -> &TraceSettings {
        &self.settings
    }

    /// The trace of a new invocation: the caller's, continued (sampled as
    /// the caller decided, else by ratio), or a new one.
    pub fn begin(&self, incoming: Option<Incoming>) -> TraceContext {
        let by_ratio = || {
            let r = self.settings.sample_ratio;
            let draw = (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64;
            r >= 1.0 || (r > 0.0 && draw < r)
        };
        match incoming {
            Some(i) if i.decided => i.ctx,
            Some(i) => TraceContext {
                sampled: by_ratio(),
                ..i.ctx
            },
            None => TraceContext::new(by_ratio()),
        }
    }

    /// Queues a finished span; a full queue drops it.
    pub fn emit(&self, span: SpanData) {
        if self.queue.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn export(
    tracer: std::sync::Weak<Tracer>,
    channel: tonic::transport::Channel,
    mut rx: tokio::sync::mpsc::Receiver<SpanData>,
) {
    let mut client = collector::trace_service_client::TraceServiceClient::new(channel);
    let mut failing = false;
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + FLUSH;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let Some(t) = tracer.upgrade() else {
            return;
        };
        let n = batch.len() as u64;
        let req = collector::ExportTraceServiceRequest {
            resource_spans: vec![otlp::ResourceSpans {
                resource: Some(resource::Resource {
                    attributes: vec![
                        attr("service.name", Attr::Str(t.settings.service_name.clone())),
                        attr("cloud.provider", Attr::Str("flint".into())),
                        attr("faas.instance.host", Attr::Str(hostname())),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![otlp::ScopeSpans {
                    scope: Some(common::InstrumentationScope {
                        name: "flintd".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans: batch.into_iter().map(SpanData::into_otlp).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        match client.export(req).await {
            Ok(_) => {
                t.exported.fetch_add(n, Ordering::Relaxed);
                if failing {
                    tracing::info!("the OTLP collector accepts spans again");
                    failing = false;
                }
            }
            Err(e) => {
                t.dropped.fetch_add(n, Ordering::Relaxed);
                if !failing {
                    tracing::warn!(endpoint = %t.settings.endpoint, error = %e,
                        "exporting spans failed; they are dropped until the collector answers");
                    failing = true;
                }
            }
        }
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xray_and_w3c_share_the_trace_id() {
        let c = TraceContext::new(true);
        let h = c.xray_header([0xab; 8]);
        assert!(
            h.starts_with("Root=1-") && h.ends_with(";Parent=abababababababab;Sampled=1"),
            "{h}"
        );
        let (back, sampled) = TraceContext::from_xray(&h).unwrap();
        assert_eq!(back.trace_id, c.trace_id);
        assert_eq!(back.parent, Some([0xab; 8]));
        assert_eq!(sampled, Some(true));
        let secs = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let t = u32::from_str_radix(&h[7..15], 16).unwrap() as u64;
        assert!(secs.abs_diff(t) < 5, "{h}");
    }

    #[test]
    fn incoming_context_is_parsed_strictly() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let i = Incoming::parse(Some(tp), None).unwrap();
        assert_eq!(i.ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(i.ctx.parent.map(hex::encode).unwrap(), "00f067aa0ba902b7");
        assert!(i.ctx.sampled && i.decided);
        let unsampled = Incoming::parse(Some(&tp.replace("-01", "-00")), None).unwrap();
        assert!(!unsampled.ctx.sampled);
        let x = Incoming::parse(
            None,
            Some("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8"),
        )
        .unwrap();
        assert_eq!(x.ctx.trace_id_hex(), "5759e988bd862e3fe1be46a994272793");
        assert!(!x.decided);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "zz",
        ] {
            assert_eq!(Incoming::parse(Some(bad), None), None, "{bad}");
        }
        assert_eq!(Incoming::parse(None, Some("Root=1-xyz-123")), None);
        assert_eq!(Incoming::parse(None, Some("Parent=53995c3f42cd8ad8")), None);
    }
}
