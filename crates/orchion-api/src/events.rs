//! The live event log: `GET /api/v1/events` (Server-Sent Events) and `GET /api/v1/ws`
//! (WebSocket), both over the store's append-only event log.
//!
//! One [`EventHub`] task reads new events from the store (so events written by other replicas
//! arrive too) and broadcasts them; each stream subscribes, then catches up from the store from
//! where the client asked (`Last-Event-ID`, or `after`), then follows the broadcast, skipping
//! what it already sent. Sequence numbers increase in commit order, so a client that resumes
//! from the last id it saw gets every later event once: no gap, no duplicate. A stream that
//! falls behind the broadcast catches up from the store again. Streams end when the server
//! starts shutting down, and their number is bounded (`server.max_event_streams`).

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use axum::{
    extract::{
        State,
        ws::{Message, WebSocket, WebSocketUpgrade},
    },
    http::HeaderMap,
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
};
use orchion_domain::{NodeId, ProjectId, RunId};
use orchion_rest::EventBody;
use orchion_store::{Event, Store};
use serde::Deserialize;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, broadcast, mpsc};
use tokio_util::task::TaskTracker;

use utoipa::IntoParams;

use orchion_control::{Cause, Reconciler};

use crate::auth::{Caller, ClientAddr};
use crate::{AppState, extract::QueryParams, problem::ApiError};

/// How often the hub looks for new events on SQLite (one server, nobody to signal it).
const POLL: Duration = Duration::from_millis(100);
/// How often it looks on PostgreSQL, where appended events are signalled (`events_appended`):
/// a safety net only.
const SIGNALLED_POLL: Duration = Duration::from_secs(5);
/// Events read from the store at once.
const PAGE: u32 = 500;
/// Events a slow stream may be behind before it catches up from the store instead.
const BACKLOG: usize = 4096;
/// How often an idle stream sends a keep-alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The event log, fanned out to every open stream.
pub struct EventHub {
    store: Arc<dyn Store>,
    sender: broadcast::Sender<Arc<Event>>,
    /// The newest sequence number read from the store.
    latest: AtomicI64,
    streams: Arc<Semaphore>,
    max_streams: usize,
    /// Streams open per client address, at most `per_client` each.
    clients: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    per_client: usize,
    /// The streams' pumps, joined when the hub stops.
    pumps: TaskTracker,
    /// Rung when events were appended (a store signal), so the hub reads the log at once.
    appended: Arc<Notify>,
}

impl EventHub {
    /// A hub that will broadcast what is appended after the log's current end.
    /// At most `max_streams` streams (events, WebSockets, logs followed) open at once, and
    /// `per_client` of them from one client address.
    pub async fn new(
        store: Arc<dyn Store>,
        max_streams: usize,
        per_client: usize,
    ) -> Result<Self, ApiError> {
        let latest = store.last_event_seq().await?;
        Ok(Self {
            store,
            sender: broadcast::channel(BACKLOG).0,
            latest: AtomicI64::new(latest),
            streams: Arc::new(Semaphore::new(max_streams)),
            max_streams,
            clients: Default::default(),
            per_client,
            pumps: TaskTracker::new(),
            appended: Arc::new(Notify::new()),
        })
    }

    /// What to ring when events were appended.
    pub fn appended(&self) -> Arc<Notify> {
        self.appended.clone()
    }

    /// Open streams.
    pub fn open_streams(&self) -> usize {
        self.max_streams - self.streams.available_permits()
    }

    /// A place for one more stream from `client`: 503 when the server has `max_streams` open,
    /// 429 when this client has its `per_client`.
    pub fn slot(&self, client: std::net::IpAddr) -> Result<StreamSlot, ApiError> {
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            ApiError::Busy(format!(
                "too many streams are open: the limit is {} (server.max_event_streams); try again later",
                self.max_streams
            ))
        })?;
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let open = clients.entry(client).or_default();
        if *open >= self.per_client {
            return Err(ApiError::TooManyStreams(format!(
                "this client has {open} streams open, as many as one client may (server.max_event_streams_per_client); close one first"
            )));
        }
        *open += 1;
        Ok(StreamSlot {
            _permit: permit,
            client,
            clients: self.clients.clone(),
        })
    }

    /// Every event as the hub broadcasts it, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.sender.subscribe()
    }
}

/// One open stream's place, given back when dropped.
pub struct StreamSlot {
    _permit: OwnedSemaphorePermit,
    client: std::net::IpAddr,
    clients: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(open) = clients.get_mut(&self.client) {
            *open -= 1;
            if *open == 0 {
                clients.remove(&self.client);
            }
        }
    }
}

/// When woken (events were appended), and every [`POLL`] (or [`SIGNALLED_POLL`] where appends
/// are signalled), reads what was appended to the log and broadcasts it. While no stream is open
/// it only follows the log's end: reading and decoding every event for nobody cost a busy
/// server a sixth of its CPU.
impl Reconciler for EventHub {
    fn name(&self) -> &'static str {
        "event_hub"
    }

    fn period(&self) -> Duration {
        match self.store.backend() {
            orchion_store::Backend::Postgres => SIGNALLED_POLL,
            orchion_store::Backend::Sqlite => POLL,
        }
    }

    fn wake(&self) -> Option<&Notify> {
        Some(&self.appended)
    }

    async fn reconcile(&self, _: Cause) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        if self.sender.receiver_count() == 0 {
            // The end is read before looking for receivers: a stream that subscribes after the
            // look catches up from the store past this end itself, so skipping to it loses
            // nothing.
            let end = self.store.last_event_seq().await?;
            if self.sender.receiver_count() == 0 {
                self.latest.fetch_max(end, Ordering::SeqCst);
                return Ok(0);
            }
        }
        let mut sent = 0;
        loop {
            let after = self.latest.load(Ordering::SeqCst);
            let events = self.store.events_after(after, PAGE).await?;
            let full = events.len() == PAGE as usize;
            for event in events {
                self.latest.store(event.seq, Ordering::SeqCst);
                // No receivers is fine: nobody is listening.
                let _ = self.sender.send(Arc::new(event));
                sent += 1;
            }
            if !full {
                return Ok(sent);
            }
        }
    }

    /// Waits for the streams' pumps, which end as the server drains or their client goes.
    async fn stopped(&self) {
        self.pumps.close();
        self.pumps.wait().await;
    }
}

/// Which events a stream carries; every given filter must match.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Events of this project.
    pub project: Option<String>,
    /// Events of this run (job, workflow run or deployment).
    pub run: Option<String>,
    /// Events of this node.
    pub node: Option<String>,
    /// Comma-separated kinds (`job.status_changed`), or families (`job.*`).
    pub kind: Option<String>,
    /// Start after this sequence number (as `Last-Event-ID` does); without either, the stream
    /// starts at the log's current end.
    pub after: Option<i64>,
}

/// An event as the API shows it.
pub(crate) fn event_body(e: &Event) -> EventBody {
    EventBody {
        seq: e.seq,
        at: e.at,
        kind: e.kind.clone(),
        subject: e.subject.clone(),
        project_id: e.project_id.map(|p| p.to_string()),
        data: e.data.clone(),
    }
}

/// The checked filters.
#[derive(Debug, Clone, Default)]
struct Filter {
    /// The project a confined caller sees: nothing else reaches its stream.
    confined: Option<ProjectId>,
    project: Option<ProjectId>,
    run: Option<String>,
    node: Option<String>,
    kinds: Vec<String>,
}

impl Filter {
    fn matches(&self, event: &Event) -> bool {
        let names = |id: &str, field: &str| {
            event.subject == id || event.data.get(field).and_then(|v| v.as_str()) == Some(id)
        };
        self.confined.is_none_or(|p| event.project_id == Some(p))
            && self.project.is_none_or(|p| event.project_id == Some(p))
            && self.run.as_deref().is_none_or(|r| names(r, "job_id"))
            && self.node.as_deref().is_none_or(|n| names(n, "node_id"))
            && (self.kinds.is_empty()
                || self.kinds.iter().any(|k| match k.strip_suffix('*') {
                    Some(family) => event.kind.starts_with(family),
                    None => event.kind == *k,
                }))
    }
}

fn invalid(name: &str, detail: String) -> ApiError {
    ApiError::InvalidParameter {
        name: name.into(),
        detail,
    }
}

/// A stream's filter and starting point, checked: every problem names its parameter.
async fn prepare(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    query: EventQuery,
    client: ClientAddr,
) -> Result<(Filter, i64, StreamSlot), ApiError> {
    let mut filter = Filter {
        confined: caller.0.project,
        ..Filter::default()
    };
    if let Some(project) = &query.project {
        filter.project = Some(
            project
                .parse()
                .map_err(|e: orchion_domain::IdParseError| invalid("project", e.to_string()))?,
        );
    }
    if let Some(run) = &query.run {
        let id: RunId = run
            .parse()
            .map_err(|e: orchion_domain::IdParseError| invalid("run", e.to_string()))?;
        filter.run = Some(id.to_string());
    }
    if let Some(node) = &query.node {
        let id: NodeId = node
            .parse()
            .map_err(|e: orchion_domain::IdParseError| invalid("node", e.to_string()))?;
        filter.node = Some(id.to_string());
    }
    if let Some(kinds) = &query.kind {
        for kind in kinds.split(',').map(str::trim).filter(|k| !k.is_empty()) {
            let known = match kind.strip_suffix(".*") {
                Some(family) => orchion_store::EVENT_KINDS
                    .iter()
                    .any(|k| k.split('.').next() == Some(family)),
                None => orchion_store::EVENT_KINDS.contains(&kind),
            };
            if !known {
                return Err(invalid(
                    "kind",
                    format!(
                        "unknown event kind `{kind}`: expected one of {}, or a family such as `job.*`",
                        orchion_store::EVENT_KINDS.join(", ")
                    ),
                ));
            }
            filter.kinds.push(
                kind.strip_suffix(".*")
                    .map_or(kind.to_owned(), |f| format!("{f}.*")),
            );
        }
    }
    let resume = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    invalid(
                        "Last-Event-ID",
                        "header `Last-Event-ID` must be an event sequence number".into(),
                    )
                })?,
        ),
        None => None,
    };
    if let Some(after) = query.after
        && after < 0
    {
        return Err(invalid(
            "after",
            format!("after must be 0 or more, got {after}"),
        ));
    }
    let last = state.store.last_event_seq().await?;
    let from = match resume.or(query.after) {
        Some(from) if from > last => {
            let name = if resume.is_some() {
                "Last-Event-ID"
            } else {
                "after"
            };
            return Err(invalid(
                name,
                format!("{name} {from} is ahead of the event log, whose latest event is {last}"),
            ));
        }
        Some(from) => {
            // Retention deleted the log up to its horizon: a resume from before it would
            // miss what was deleted, so it is refused in words rather than silently.
            let horizon = state.store.events_horizon().await?;
            if from < horizon {
                let name = if resume.is_some() {
                    "Last-Event-ID"
                } else {
                    "after"
                };
                return Err(ApiError::Gone(format!(
                    "{name} {from} is before the event log's horizon: events up to {horizon} were deleted by retention (retention.events). Resume from {horizon} or later, or start without {name} and read the current state"
                )));
            }
            from
        }
        None => last,
    };
    let slot = state.events.slot(client.ip())?;
    Ok((filter, from, slot))
}

/// Feeds `out` with the events after `from` that match `filter`, until the client goes away or
/// the server shuts down.
async fn pump(
    state: AppState,
    filter: Filter,
    mut last: i64,
    out: mpsc::Sender<Arc<Event>>,
    _slot: StreamSlot,
) {
    /// Counts the stream as open while it lives.
    struct Open;
    impl Drop for Open {
        fn drop(&mut self) {
            orchion_metrics::metrics().event_streams.dec();
        }
    }
    orchion_metrics::metrics().event_streams.inc();
    let _open = Open;
    let mut live = state.events.sender.subscribe();
    let store = state.store.clone();
    let catch_up = async |last: &mut i64| -> bool {
        loop {
            let Ok(events) = store.events_after(*last, PAGE).await else {
                return false;
            };
            let full = events.len() == PAGE as usize;
            for event in events {
                *last = event.seq;
                if filter.matches(&event) && out.send(Arc::new(event)).await.is_err() {
                    return false;
                }
            }
            if !full {
                return true;
            }
        }
    };
    if !catch_up(&mut last).await {
        return;
    }
    loop {
        let received = tokio::select! {
            received = live.recv() => received,
            () = state.lifecycle.draining() => return,
            () = out.closed() => return,
        };
        match received {
            Ok(event) if event.seq <= last => {}
            Ok(event) => {
                last = event.seq;
                if filter.matches(&event) && out.send(event).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                if !catch_up(&mut last).await {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Starts a stream's pump; its events arrive on the receiver.
async fn open(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    query: EventQuery,
    client: ClientAddr,
) -> Result<mpsc::Receiver<Arc<Event>>, ApiError> {
    let (filter, from, slot) = prepare(state, caller, headers, query, client).await?;
    let (tx, rx) = mpsc::channel(256);
    let pump = pump(state.clone(), filter, from, tx, slot);
    state.events.pumps.spawn(pump);
    Ok(rx)
}

/// The event log as Server-Sent Events: each event's `id` is its sequence number, so a client
/// that reconnects with `Last-Event-ID` gets exactly what it missed. Keep-alive comments every
/// 15 s; the stream ends when the server shuts down.
#[utoipa::path(get, path = "/api/v1/events", tag = "events",
    params(EventQuery, ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this sequence number")),
    responses(
        (status = 200, description = "text/event-stream of EventBody", content_type = "text/event-stream"),
        (status = 400, body = crate::problem::Problem),
        (status = 410, description = "Resuming from before the log's horizon (deleted by retention)", body = crate::problem::Problem),
        (status = 503, body = crate::problem::Problem, description = "Too many open streams"),
    ))]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientAddr,
    headers: HeaderMap,
    QueryParams(query): QueryParams<EventQuery>,
) -> Result<Response, ApiError> {
    let rx = open(&state, &caller, &headers, query, client).await?;
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        let sse = SseEvent::default()
            .id(event.seq.to_string())
            .json_data(event_body(event.as_ref()))
            .unwrap_or_default();
        Some((Ok::<_, Infallible>(sse), rx))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// The event log over WebSocket, as JSON text messages, with the same filters and `after`.
#[utoipa::path(get, path = "/api/v1/ws", tag = "events",
    params(EventQuery),
    responses(
        (status = 101, description = "WebSocket of EventBody messages"),
        (status = 400, body = crate::problem::Problem),
        (status = 410, description = "Resuming from before the log's horizon (deleted by retention)", body = crate::problem::Problem),
        (status = 503, body = crate::problem::Problem, description = "Too many open streams"),
    ))]
pub async fn websocket(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientAddr,
    headers: HeaderMap,
    QueryParams(query): QueryParams<EventQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let rx = open(&state, &caller, &headers, query, client).await?;
    Ok(upgrade.on_upgrade(move |socket| serve_socket(socket, rx, state)))
}

async fn serve_socket(mut socket: WebSocket, mut rx: mpsc::Receiver<Arc<Event>>, state: AppState) {
    let mut ping = tokio::time::interval(KEEP_ALIVE);
    ping.tick().await;
    loop {
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { break };
                let text = serde_json::to_string(&event_body(event.as_ref())).unwrap_or_default();
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return;
                }
            }
            () = state.lifecycle.draining() => break,
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}
