//! Per-call Prometheus metrics of a gRPC server: a tower layer counting every call by service,
//! method and gRPC status code, and timing it from the request until its response ends (for a
//! stream: until its trailers), the layout of the Go ecosystem's `grpc_server_handled_total`
//! and `grpc_server_handling_seconds`.
//!
//! The layer runs outside the authorization layer, so refused calls are counted with the code
//! they were refused with. Method labels come only from the build-time method table (and gRPC
//! reflection) and the methods a server names ([`RpcMetricsLayer::with_methods`]): any other
//! path is counted as `unknown`, so callers cannot grow the label set.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tonic::body::Body;
use tonic::{Code, Status};
use tower_layer::Layer;
use tower_service::Service;

/// Latency buckets (seconds): a millisecond-scale unary call up to a minute-long stream.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// gRPC reflection, which every server of ours serves.
const REFLECTION: &[&str] = &[
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The label value of a path outside the method table.
const UNKNOWN: &str = "unknown";

/// The counters and histograms of one server, registered in a caller's registry.
#[derive(Debug, Clone)]
pub struct RpcMetrics {
    started: IntCounterVec,
    handled: IntCounterVec,
    seconds: HistogramVec,
}

impl RpcMetrics {
    /// Metrics named `<prefix>_grpc_server_started_total`, `<prefix>_grpc_server_handled_total`
    /// and `<prefix>_grpc_server_handling_seconds`, registered in `registry`.
    pub fn new(prefix: &str, registry: &Registry) -> Result<Self, prometheus::Error> {
        let started = IntCounterVec::new(
            Opts::new(
                format!("{prefix}_grpc_server_started_total"),
                "Calls started on the server (streams count when they open), by service and \
                 method.",
            ),
            &["grpc_service", "grpc_method"],
        )?;
        let handled = IntCounterVec::new(
            Opts::new(
                format!("{prefix}_grpc_server_handled_total"),
                "Calls completed by the server, by service, method and gRPC status code.",
            ),
            &["grpc_service", "grpc_method", "grpc_code"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                format!("{prefix}_grpc_server_handling_seconds"),
                "Time from a call's request to the end of its response (streams: their whole \
                 life), by service and method.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["grpc_service", "grpc_method"],
        )?;
        registry.register(Box::new(started.clone()))?;
        registry.register(Box::new(handled.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        Ok(Self {
            started,
            handled,
            seconds,
        })
    }

    /// How many calls of `service`/`method` ended with `code` (for tests and derived counters).
    pub fn handled(&self, service: &str, method: &str, code: Code) -> u64 {
        self.handled
            .with_label_values(&[service, method, code_name(code)])
            .get()
    }

    fn record(&self, call: &CallLabels, code: Code, started: Instant) {
        self.handled
            .with_label_values(&[&call.service, &call.method, code_name(code)])
            .inc();
        self.seconds
            .with_label_values(&[&call.service, &call.method])
            .observe(started.elapsed().as_secs_f64());
        if let Some(hook) = &call.hook {
            hook(&call.service, &call.method, code);
        }
    }
}

/// Called with every finished call: lets a server derive its own counters (registrations,
/// deletions) from the calls without touching their handlers.
pub type CallHook = Arc<dyn Fn(&str, &str, Code) + Send + Sync>;

/// gRPC's canonical code names, as other ecosystems label them (`OK`, `NotFound`, …).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// A tower layer recording [`RpcMetrics`]; does nothing without metrics.
#[derive(Clone, Default)]
pub struct RpcMetricsLayer {
    metrics: Option<RpcMetrics>,
    hook: Option<CallHook>,
    methods: &'static [&'static str],
}

impl std::fmt::Debug for RpcMetricsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcMetricsLayer")
            .field("enabled", &self.metrics.is_some())
            .finish()
    }
}

impl RpcMetricsLayer {
    /// A layer recording into `metrics` (nothing if None), calling `hook` for every call.
    pub fn new(metrics: Option<RpcMetrics>, hook: Option<CallHook>) -> Self {
        Self {
            metrics,
            hook,
            methods: &[],
        }
    }

    /// Also labels these methods (paths, `/pkg.Service/Method`), for servers outside the
    /// cluster's method table (BMaaS).
    pub fn with_methods(mut self, methods: &'static [&'static str]) -> Self {
        self.methods = methods;
        self
    }
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
            hook: self.hook.clone(),
            methods: self.methods,
        }
    }
}

/// The service produced by [`RpcMetricsLayer`].
#[derive(Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Option<RpcMetrics>,
    hook: Option<CallHook>,
    methods: &'static [&'static str],
}

impl<S> std::fmt::Debug for RpcMetricsService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcMetricsService").finish_non_exhaustive()
    }
}

/// Labels of one call.
struct CallLabels {
    service: String,
    method: String,
    hook: Option<CallHook>,
}

impl CallLabels {
    fn of(path: &str, hook: Option<CallHook>, methods: &[&str]) -> Self {
        let known = proto::authz::policy_for(path).is_some()
            || methods.contains(&path)
            || REFLECTION.contains(&path);
        let split = path
            .strip_prefix('/')
            .and_then(|rest| rest.split_once('/'))
            .filter(|_| known);
        let (service, method) = split.unwrap_or((UNKNOWN, UNKNOWN));
        Self {
            service: service.to_string(),
            method: method.to_string(),
            hook,
        }
    }
}

impl<S> Service<http::Request<Body>> for RpcMetricsService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let Some(metrics) = self.metrics.clone() else {
            return Box::pin(self.inner.call(req));
        };
        let labels = CallLabels::of(req.uri().path(), self.hook.clone(), self.methods);
        metrics
            .started
            .with_label_values(&[&labels.service, &labels.method])
            .inc();
        let started = Instant::now();
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = match response.await {
                Ok(r) => r,
                Err(e) => {
                    metrics.record(&labels, Code::Internal, started);
                    return Err(e);
                }
            };
            // A trailers-only response (an error, or a call refused before its handler ran)
            // carries its status in the headers.
            let header_code = status_code(response.headers());
            Ok(response.map(|body| {
                Body::new(ObservedBody {
                    inner: body,
                    pending: Some(Pending {
                        metrics,
                        labels,
                        started,
                        header_code,
                    }),
                })
            }))
        })
    }
}

/// The `grpc-status` of a header map, if present.
fn status_code(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
}

/// What is recorded once a response ends.
struct Pending {
    metrics: RpcMetrics,
    labels: CallLabels,
    started: Instant,
    header_code: Option<Code>,
}

/// A response body that records its call when its status is known: at its trailers, at its
/// end, or when it is dropped unfinished (the client went away: Cancelled).
struct ObservedBody {
    inner: Body,
    pending: Option<Pending>,
}

impl ObservedBody {
    fn finish(&mut self, code: Option<Code>) {
        if let Some(p) = self.pending.take() {
            let code = code.or(p.header_code).unwrap_or(Code::Ok);
            p.metrics.record(&p.labels, code, p.started);
        }
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if self.pending.is_some() {
            let code = self
                .pending
                .as_ref()
                .and_then(|p| p.header_code)
                .unwrap_or(Code::Cancelled);
            self.finish(Some(code));
        }
    }
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        match &frame {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(trailers) = f.trailers_ref() {
                    let code = status_code(trailers);
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(status))) => {
                let code = status.code();
                self.finish(Some(code));
            }
            Poll::Ready(None) => self.finish(None),
            Poll::Pending => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
