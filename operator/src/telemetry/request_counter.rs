use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tower::{Layer, Service};

/// Counts the HTTP requests a client sends, split into reads and writes, so a
/// reconcile can say exactly what it cost each member.
#[derive(Clone, Debug, Default)]
pub struct RequestCounter(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    reads: AtomicU64,
    writes: AtomicU64,
}

/// A snapshot of a [`RequestCounter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCount {
    pub reads: u64,
    pub writes: u64,
}

impl RequestCount {
    /// Requests between `earlier` and `self`.
    pub fn since(self, earlier: RequestCount) -> RequestCount {
        RequestCount {
            reads: self.reads - earlier.reads,
            writes: self.writes - earlier.writes,
        }
    }
}

impl RequestCounter {
    /// Current totals.
    pub fn snapshot(&self) -> RequestCount {
        RequestCount {
            reads: self.0.reads.load(Ordering::Relaxed),
            writes: self.0.writes.load(Ordering::Relaxed),
        }
    }

    fn record(&self, method: &http::Method) {
        let is_read = matches!(*method, http::Method::GET | http::Method::HEAD);
        let counter = if is_read {
            &self.0.reads
        } else {
            &self.0.writes
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl<S> Layer<S> for RequestCounter {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            counter: self.clone(),
        }
    }
}

/// A service wrapped by [`RequestCounter`].
#[derive(Clone, Debug)]
pub struct Counted<S> {
    inner: S,
    counter: RequestCounter,
}

impl<S, B> Service<http::Request<B>> for Counted<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.counter.record(request.method());
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_are_counted_apart() {
        let counter = RequestCounter::default();
        let before = counter.snapshot();
        for m in [
            http::Method::GET,
            http::Method::GET,
            http::Method::PATCH,
            http::Method::POST,
            http::Method::DELETE,
        ] {
            counter.record(&m);
        }
        assert_eq!(
            counter.snapshot().since(before),
            RequestCount {
                reads: 2,
                writes: 3
            }
        );
    }
}
