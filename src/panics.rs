//! The text of a panic payload, for the log line that reports a caught
//! panic (a connection's, the acceptor's, a shard's). A leaf: it imports
//! nothing from the crate, so every layer may use it.

/// The text of a panic payload: the `&str` or `String` given to `panic!`.
pub fn message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown panic")
}
