//! The HTTP edge: hyper 1.x (HTTP/1.1, keep-alive) on a tokio `UnixListener`,
//! shaped like Firecracker's micro-http server so that a client cannot tell them
//! apart on the wire:
//!
//! - status line with an empty reason phrase (`HTTP/1.1 204 \r\n`);
//! - `Server: Firecracker API` and `Connection: keep-alive` on every response, no
//!   `Date`; `Content-Type: application/json` and `Content-Length` on every
//!   response except 204;
//! - methods other than GET/PUT/PATCH/DELETE, and bodies over
//!   `--http-api-max-payload-size`, get micro-http's own 400 with its (not quite
//!   JSON) `{ "error": "..." }` body;
//! - requests are executed one at a time, as Firecracker's single API thread does
//!   (an injected delay holds up every other request, as a long snapshot write
//!   does in Firecracker), but any number of connections can be open and each
//!   can carry many requests.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;

use crate::action::{self, Method};
use crate::console::Console;
use crate::fault::Faults;
use crate::telemetry::Level;
use crate::vmm::{ActionError, Effect, Reply, Vmm};

/// State shared by every connection.
#[derive(Debug)]
pub struct ApiServer {
    vmm: Arc<Mutex<Vmm>>,
    faults: Faults,
    max_payload_bytes: usize,
    requests: AtomicU64,
    /// Held from a request's arrival to its answer: one request at a time.
    serial: tokio::sync::Mutex<()>,
}

impl ApiServer {
    /// Serves `vmm` with the given faults and payload limit.
    pub fn new(vmm: Arc<Mutex<Vmm>>, faults: Faults, max_payload_bytes: usize) -> Self {
        Self {
            vmm,
            faults,
            max_payload_bytes,
            requests: AtomicU64::new(0),
            serial: tokio::sync::Mutex::new(()),
        }
    }

    /// Accepts connections forever, one task per connection.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future stops accepting; connections already accepted keep
    /// being served by their own tasks.
    pub async fn serve(self: Arc<Self>, listener: UnixListener) {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            };
            let server = Arc::clone(&self);
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let server = Arc::clone(&server);
                    // A request runs to the end even if its client goes
                    // away, as in Firecracker: a snapshot whose client was
                    // killed is still written (and holds up the API).
                    let handled = tokio::spawn(async move { server.handle(req).await });
                    async move {
                        Ok::<_, Infallible>(match handled.await {
                            Ok(response) => response,
                            Err(_) => micro_http_error("Internal error."),
                        })
                    }
                });
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .title_case_headers(true)
                    .auto_date_header(false)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let _one_at_a_time = self.serial.lock().await;
        let n = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
        if self.faults.crashes_at(n) {
            // FAKE_FC_CRASH_AFTER_REQUESTS: die before answering, like a crashed VMM.
            std::process::abort();
        }
        let method_text = req.method().as_str().to_owned();
        let path = req.uri().path().to_owned();

        let Some(method) = Method::from_http(&method_text) else {
            return micro_http_error("Invalid HTTP Method: Unsupported HTTP method.");
        };
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        if declared > self.max_payload_bytes {
            return micro_http_error(&format!(
                "Request payload with size {declared} is larger than the limit of {} allowed by server.",
                self.max_payload_bytes
            ));
        }
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return micro_http_error("Invalid request."),
        };
        let body = (!body.is_empty()).then_some(body);

        self.faults.note_arrival(&method_text, &path);
        if let Some(delay) = self.faults.delay_for(&method_text, &path) {
            tokio::time::sleep(delay).await;
        }

        self.log(Level::Info, &describe(method, &path, body.as_deref()));
        if self.faults.should_fail(&method_text, &path) {
            if method_text == "PUT" && path == "/snapshot/load" {
                // Every failed load ends Firecracker, an injected one too.
                let console = lock_vmm(&self.vmm).console();
                apply(Effect::Exit {
                    code: 1,
                    after: std::time::Duration::ZERO,
                    lines: Vec::new(),
                    console,
                })
                .await;
                std::mem::forget(_one_at_a_time);
            }
            return self.fault(StatusCode::BAD_REQUEST, "injected failure");
        }

        let action = match action::parse(method, &path, body.as_deref()) {
            Ok(a) => a,
            Err(e) => return self.fault(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        let vmm = Arc::clone(&self.vmm);
        let outcome = tokio::task::spawn_blocking(move || {
            let mut vmm = vmm.lock().unwrap_or_else(|p| p.into_inner());
            let is_action = matches!(
                action,
                action::Action::InstanceStart
                    | action::Action::FlushMetrics
                    | action::Action::SendCtrlAltDel
            );
            if is_action {
                vmm.telemetry.counters.actions_count += 1;
            }
            vmm.handle(action)
        })
        .await;
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };

        // A failed snapshot load ends Firecracker: its API thread answers
        // and serves nothing more while the process exits. Holding the
        // request lock for good keeps every later request unanswered.
        let fatal = outcome.effects.iter().any(Effect::ends_the_api);
        for effect in outcome.effects {
            apply(effect).await;
        }
        if fatal {
            std::mem::forget(_one_at_a_time);
        }
        match outcome.result {
            Ok(Reply::Empty) => {
                self.log(
                    Level::Info,
                    "The request was executed successfully. Status code: 204 No Content.",
                );
                response(StatusCode::NO_CONTENT, None)
            }
            Ok(Reply::Json(body)) => {
                self.log(
                    Level::Info,
                    "The request was executed successfully. Status code: 200 OK.",
                );
                response(StatusCode::OK, Some(body))
            }
            Err(e) => {
                let status = match e {
                    ActionError::MmdsLimit(_) => StatusCode::PAYLOAD_TOO_LARGE,
                    _ => StatusCode::BAD_REQUEST,
                };
                self.fault(status, &e.to_string())
            }
        }
    }

    fn log(&self, level: Level, message: &str) {
        let mut vmm = lock_vmm(&self.vmm);
        vmm.telemetry.log(level, "fc_api", message);
    }

    fn fault(&self, status: StatusCode, message: &str) -> Response<Full<Bytes>> {
        {
            let mut vmm = self.vmm.lock().unwrap_or_else(|p| p.into_inner());
            vmm.telemetry.counters.api_fails += 1;
            vmm.telemetry.log(
                Level::Error,
                "fc_api",
                &format!(
                    "Received Error. Status code: {} {}. Message: {message}",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("")
                ),
            );
        }
        let body = serde_json::json!({ "fault_message": message }).to_string();
        response(status, Some(body))
    }
}

/// Firecracker's description of a request in its log (`parsed_request.rs::describe`).
fn describe(method: Method, path: &str, body: Option<&[u8]>) -> String {
    let m = match method {
        Method::Get => "Get",
        Method::Put => "Put",
        Method::Patch => "Patch",
        Method::Delete => "Delete",
    };
    match body {
        Some(b) if path != "/mmds" => format!(
            "The API server received a {m} request on {path:?} with body {:?}.",
            std::str::from_utf8(b).unwrap_or("inconvertible to UTF-8")
        ),
        _ => format!("The API server received a {m} request on {path:?}."),
    }
}

async fn apply(effect: Effect) {
    match effect {
        Effect::Booted { console, lines } => {
            let _ = tokio::task::spawn_blocking(move || console.write_lines(&lines)).await;
        }
        Effect::Exit {
            code,
            after,
            lines,
            console,
        } => {
            // Give the answer time to reach the client first.
            let after = after.max(std::time::Duration::from_millis(10));
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                exit_with(&console, &lines, code);
            });
        }
    }
}

fn exit_with(console: &Console, lines: &[String], code: u8) -> ! {
    let _ = console.write_lines(lines);
    // Like Firecracker, the API socket file is left behind.
    std::process::exit(i32::from(code));
}

fn response(status: StatusCode, body: Option<String>) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body.clone().unwrap_or_default())));
    *res.status_mut() = status;
    res.extensions_mut()
        .insert(hyper::ext::ReasonPhrase::from_static(b""));
    let h = res.headers_mut();
    h.insert(
        http::header::SERVER,
        HeaderValue::from_static("Firecracker API"),
    );
    h.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("keep-alive"),
    );
    if status != StatusCode::NO_CONTENT {
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let len = body.as_ref().map_or(0, String::len);
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    res
}

/// micro-http's own answer to a request it cannot parse.
fn micro_http_error(inner: &str) -> Response<Full<Bytes>> {
    response(
        StatusCode::BAD_REQUEST,
        Some(format!(
            "{{ \"error\": \"{inner}\nAll previous unanswered requests will be dropped.\" }}"
        )),
    )
}

fn lock_vmm(vmm: &Mutex<Vmm>) -> std::sync::MutexGuard<'_, Vmm> {
    vmm.lock().unwrap_or_else(|p| p.into_inner())
}
