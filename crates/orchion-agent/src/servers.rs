//! The servers an agent may talk to: several replicas of one control plane. Every call goes to
//! the current one; a call that fails in transport (refused, reset, timed out) moves the agent
//! on to the next, so the calls after it reach another replica. Liveness, credentials and
//! leases live in the shared store, so the agent keeps its node identity and its running work
//! while it moves: its next heartbeat and lease extension simply arrive elsewhere.
//!
//! A DNS name that resolves to several addresses is also tried address by address when a
//! connection is made; several names (or addresses) are listed with `--server a,b,c`.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use tonic::{
    body::Body,
    transport::{Channel, Endpoint},
};
use tower::Service;

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A gRPC channel over several servers, moving on to the next when one fails.
#[derive(Clone)]
pub(crate) struct Servers {
    inner: Arc<Inner>,
}

struct Inner {
    urls: Vec<String>,
    channels: Vec<Channel>,
    /// Which server calls go to now.
    current: Mutex<usize>,
}

impl Servers {
    /// Lazily connecting channels to each of `urls`, with the deadline of the longest call.
    pub(crate) fn new(urls: &[String], longest_call: Duration) -> Result<Self, (String, String)> {
        let mut channels = Vec::with_capacity(urls.len());
        for url in urls {
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| (url.clone(), e.to_string()))?
                .connect_timeout(CONNECT_TIMEOUT)
                // The longest call is a claim's long poll: a channel-wide timeout shorter than
                // it failed every idle claim. Each call carries its own deadline too, and
                // HTTP/2 pings find a dead or partitioned server.
                .timeout(longest_call)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true)
                .tcp_nodelay(true);
            channels.push(endpoint.connect_lazy());
        }
        if channels.is_empty() {
            return Err((String::new(), "no server address given".into()));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                urls: urls.to_vec(),
                channels,
                current: Mutex::new(0),
            }),
        })
    }

    fn current(&self) -> usize {
        *self
            .inner
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The address calls go to now.
    pub(crate) fn url(&self) -> &str {
        &self.inner.urls[self.current()]
    }

    /// Server `which` failed a call: the next calls go to the one after it (unless another
    /// call already moved on).
    fn failed(&self, which: usize, error: &tonic::transport::Error) {
        let n = self.inner.channels.len();
        if n == 1 {
            return;
        }
        let mut current = self
            .inner
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *current == which {
            *current = (which + 1) % n;
            tracing::warn!(
                failed = %self.inner.urls[which],
                next = %self.inner.urls[*current],
                %error,
                "a server did not answer; moving to the next"
            );
        }
    }
}

impl Service<http::Request<Body>> for Servers {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    /// Always ready: readiness is the chosen channel's, awaited inside the call.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let which = self.current();
        let mut channel = self.inner.channels[which].clone();
        let servers = self.clone();
        Box::pin(async move {
            let result = async {
                std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
                channel.call(request).await
            }
            .await;
            if let Err(e) = &result {
                servers.failed(which, e);
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_address_that_is_not_a_uri_is_named() {
        let bad = Servers::new(
            &["http://ok:1".into(), "not a uri".into()],
            Duration::from_secs(1),
        );
        assert!(matches!(bad, Err((url, _)) if url == "not a uri"));
        assert!(Servers::new(&[], Duration::from_secs(1)).is_err());
    }

    #[tokio::test]
    async fn a_failed_call_moves_the_next_calls_to_the_next_server() {
        // Two ports nobody listens on: each failed call moves on, round the list.
        let dead = |port: u16| format!("http://127.0.0.1:{port}");
        let servers = Servers::new(&[dead(1), dead(2)], Duration::from_secs(1)).unwrap();
        assert_eq!(servers.url(), dead(1));
        let mut client = servers.clone();
        let request = || http::Request::new(Body::empty());
        assert!(client.call(request()).await.is_err());
        assert_eq!(servers.url(), dead(2));
        assert!(client.call(request()).await.is_err());
        assert_eq!(servers.url(), dead(1));
    }
}
