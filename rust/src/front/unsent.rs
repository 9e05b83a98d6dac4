//! Which failed HTTP/2 requests the server never took, so that sending them again cannot run
//! them twice: what gRPC clients retry transparently when a connection goes away.

/// Whether hyper failed a request the server never took: cancelled before it was sent,
/// refused (REFUSED_STREAM), or beyond the last stream a closing connection still serves
/// (GOAWAY without an error).
pub fn never_taken(error: &hyper::Error) -> bool {
    let h2 = std::error::Error::source(error).and_then(|s| s.downcast_ref::<h2::Error>());
    error.is_canceled()
        || h2.is_some_and(|e| {
            e.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR))
        })
}
