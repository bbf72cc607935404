//! Orchion's gRPC edge: `orchion.v1.NodeService` and `grpc.health.v1`, on tonic.
//!
//! Boundary: protobuf messages are converted here, by hand, to domain values; registry errors
//! become `tonic::Status` in one function, [`status_of`]. Internal errors are logged, never sent.
//!
//! Authentication is a bearer token in the `authorization` metadata: a join token for a new
//! node's `RegisterNode`, the node's own credential for a node registering again, `Heartbeat`
//! and `LeaveNode`, either for `ListNodes`.

mod work;

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use orchion_control::{JoinTokens, NodeRegistry, RegistryError};
use orchion_domain::{Cursor, Node, NodeFilter, NodeId, NodeRegistration, NodeStatus, PageRequest};
use orchion_proto::v1::{
    self as pb,
    node_service_server::{NodeService as NodeServiceApi, NodeServiceServer},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, metadata::MetadataMap};

/// The `orchion.v1.NodeService` implementation.
pub struct NodeService {
    registry: Arc<NodeRegistry>,
    join_tokens: Arc<JoinTokens>,
}

impl NodeService {
    /// A service admitting new nodes that present one of `join_tokens`.
    pub fn new(registry: Arc<NodeRegistry>, join_tokens: Arc<JoinTokens>) -> Self {
        Self {
            registry,
            join_tokens,
        }
    }
}

pub use crate::work::{EgressAllow, Forward, WorkService};

/// Serves gRPC on `listener` until `shutdown` is cancelled: over TLS with `tls`'s gRPC
/// configuration (current at each connection) when given, plaintext otherwise.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<orchion_tls::ServerTls>>,
    service: NodeService,
    work: WorkService,
    max_message_bytes: usize,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<NodeServiceServer<NodeService>>().await;
    health
        .set_serving::<orchion_proto::v1::work_service_server::WorkServiceServer<WorkService>>()
        .await;
    let nodes = NodeServiceServer::new(service)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let work = orchion_proto::v1::work_service_server::WorkServiceServer::new(work)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(nodes)
        .add_service(work);
    match tls {
        None => {
            router
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    shutdown.cancelled_owned(),
                )
                .await
        }
        Some(tls) => {
            let incoming = orchion_tls::accept(listener, move || tls.grpc());
            router
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                .await
        }
    }
}

/// Who is registering: a new node a join token admitted, or a node registering again.
enum Joining {
    New(orchion_control::Admission),
    Again(NodeId),
}

/// The bearer token in the request's metadata.
fn bearer(metadata: &MetadataMap) -> Result<&str, Status> {
    metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>` metadata"))
}

fn parse_node_id(raw: &str) -> Result<NodeId, Status> {
    raw.parse::<NodeId>()
        .map_err(|e| Status::invalid_argument(format!("node_id: {e}")))
}

/// The one mapping from registry errors to gRPC statuses.
pub fn status_of(error: RegistryError) -> Status {
    match error {
        RegistryError::NotFound(id) => {
            Status::not_found(format!("node `{id}` is not registered: register again"))
        }
        RegistryError::BadCredential(id) => {
            Status::unauthenticated(format!("the credential is not valid for node `{id}`"))
        }
        RegistryError::Invalid(errors) => Status::invalid_argument(errors.to_string()),
        e @ RegistryError::BeyondLimits(_) => Status::permission_denied(e.to_string()),
        RegistryError::Store(e @ orchion_store::StoreError::Unavailable(_)) => {
            tracing::warn!(error = %e, "store unavailable");
            Status::unavailable("the store is unavailable; retry")
        }
        RegistryError::Store(e) => {
            tracing::error!(error = %e, "store error");
            Status::internal("internal error")
        }
    }
}

fn status_to_pb(status: NodeStatus) -> pb::NodeStatus {
    match status {
        NodeStatus::Ready => pb::NodeStatus::Ready,
        NodeStatus::Draining => pb::NodeStatus::Draining,
        NodeStatus::Unreachable => pb::NodeStatus::Unreachable,
        NodeStatus::Down => pb::NodeStatus::Down,
    }
}

fn timestamp(at: time::OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: i32::try_from(at.nanosecond()).unwrap_or(0),
    }
}

fn node_to_pb(node: Node) -> pb::Node {
    pb::Node {
        id: node.id.to_string(),
        status: status_to_pb(node.status()).into(),
        name: node.name,
        address: node.address,
        labels: node.labels.as_map().clone().into_iter().collect(),
        capacity: Some(pb::Capacity {
            cpu_millis: node.capacity.cpu_millis,
            memory_bytes: node.capacity.memory_bytes,
            gpus: node.capacity.gpus,
        }),
        executors: node.executors,
        version: node.version,
        registered_at: Some(timestamp(node.registered_at)),
        last_heartbeat_at: Some(timestamp(node.last_heartbeat_at)),
    }
}

fn interval_ms(registry: &NodeRegistry) -> u64 {
    u64::try_from(registry.settings().heartbeat_interval().as_millis()).unwrap_or(u64::MAX)
}

fn fence_ms(registry: &NodeRegistry) -> u64 {
    u64::try_from(registry.settings().fence_after().as_millis()).unwrap_or(u64::MAX)
}

#[tonic::async_trait]
impl NodeServiceApi for NodeService {
    async fn register_node(
        &self,
        request: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        let token = bearer(request.metadata())?.to_owned();
        let peer: Option<SocketAddr> = request.remote_addr();
        let request = request.into_inner();
        let id = if request.node_id.is_empty() {
            None
        } else {
            Some(parse_node_id(&request.node_id)?)
        };
        // A new node needs a join token that may be used now; a node rejoining, its own
        // credential (checked by the registry).
        let joining = match id {
            None => Joining::New(
                self.join_tokens
                    .admit(&token)
                    .await
                    .map_err(|e| status_of(e.into()))?
                    .ok_or_else(|| {
                        Status::unauthenticated(
                            "the join token is not one of this cluster's, has expired or was revoked",
                        )
                    })?,
            ),
            Some(id) => Joining::Again(id),
        };
        let address = if request.address.is_empty() {
            peer.map(|p| p.ip().to_string()).unwrap_or_default()
        } else {
            request.address
        };
        let capacity = request.capacity.unwrap_or_default();
        let registration = NodeRegistration::new(
            request.name,
            address,
            request.labels.into_iter().collect::<BTreeMap<_, _>>(),
            (capacity.cpu_millis, capacity.memory_bytes, capacity.gpus),
            request.executors,
            request.version,
        )
        .map_err(|e| status_of(RegistryError::Invalid(e)))?;
        let registered = match joining {
            Joining::Again(id) => self.registry.rejoin(id, &token, registration).await,
            Joining::New(admission) => self.registry.join(&admission, registration).await,
        }
        .map_err(|e| match e {
            RegistryError::BadCredential(id) => Status::unauthenticated(format!(
                "registering node `{id}` again needs that node's own credential, not a join token"
            )),
            e => status_of(e),
        })?;
        Ok(Response::new(pb::RegisterNodeResponse {
            node_id: registered.node.id.to_string(),
            credential: registered.credential,
            heartbeat_interval_ms: interval_ms(&self.registry),
            fence_after_ms: fence_ms(&self.registry),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let credential = bearer(request.metadata())?.to_owned();
        let id = parse_node_id(&request.get_ref().node_id)?;
        let beat = self
            .registry
            .heartbeat(id, &credential)
            .await
            .map_err(status_of)?;
        let commands = if beat.restart {
            vec![pb::Command::Restart.into()]
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::HeartbeatResponse {
            heartbeat_interval_ms: interval_ms(&self.registry),
            status: status_to_pb(beat.status).into(),
            commands,
            fence_after_ms: fence_ms(&self.registry),
        }))
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let token = bearer(request.metadata())?;
        let admitted = self
            .join_tokens
            .admit(token)
            .await
            .map_err(|e| status_of(e.into()))?
            .is_some();
        if !admitted && !self.registry.is_node_credential(token) {
            return Err(Status::unauthenticated(
                "present the join token or a node credential",
            ));
        }
        let request = request.into_inner();
        let status = match pb::NodeStatus::try_from(request.status) {
            Ok(pb::NodeStatus::Unspecified) => None,
            Ok(pb::NodeStatus::Ready) => Some(NodeStatus::Ready),
            Ok(pb::NodeStatus::Draining) => Some(NodeStatus::Draining),
            Ok(pb::NodeStatus::Unreachable) => Some(NodeStatus::Unreachable),
            Ok(pb::NodeStatus::Down) => Some(NodeStatus::Down),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "status: {} is not a NodeStatus",
                    request.status
                )));
            }
        };
        let cursor = if request.cursor.is_empty() {
            None
        } else {
            Some(
                request
                    .cursor
                    .parse::<Cursor>()
                    .map_err(|e| Status::invalid_argument(e.message))?,
            )
        };
        let limit = (request.limit != 0).then_some(request.limit);
        let page =
            PageRequest::new(limit, cursor).map_err(|e| Status::invalid_argument(e.message))?;
        let filter = NodeFilter {
            status,
            labels: BTreeMap::new(),
        };
        let page = self.registry.list(&filter, page);
        Ok(Response::new(pb::ListNodesResponse {
            nodes: page.items.into_iter().map(node_to_pb).collect(),
            next_cursor: page.next.map(|c| c.to_string()).unwrap_or_default(),
        }))
    }

    async fn leave_node(
        &self,
        request: Request<pb::LeaveNodeRequest>,
    ) -> Result<Response<pb::LeaveNodeResponse>, Status> {
        let credential = bearer(request.metadata())?.to_owned();
        let id = parse_node_id(&request.get_ref().node_id)?;
        self.registry
            .leave(id, &credential)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::LeaveNodeResponse {}))
    }
}
