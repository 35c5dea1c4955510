//! Why a request was refused, and the one mapping from that reason to a status.
//!
//! `ParseError` is `Copy` and carries no heap data: it is produced on the hot path
//! and must never allocate. The connection answers it with `status_for` and closes.

use super::status::Status;

/// Everything that can make a request unacceptable before a handler sees it.
///
/// Each variant names the rule broken; `status_for` decides the status, so the
/// parser never has to know about HTTP status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The request line is not `method SP request-target SP HTTP-version`.
    #[error("malformed request line")]
    RequestLine,
    /// A header field name or value has a forbidden byte (space before the
    /// colon, obs-fold, a control character, a non-token name).
    #[error("malformed header field")]
    HeaderField,
    /// The request target is neither origin-, absolute-, authority- (CONNECT)
    /// nor asterisk-form (OPTIONS).
    #[error("malformed request target")]
    Target,
    /// An HTTP/1.1 request without a Host header (RFC 9112 §3.2).
    #[error("missing Host header")]
    MissingHost,
    /// More than one Host header, or a Host that disagrees with itself.
    #[error("more than one Host header")]
    DuplicateHost,
    /// Content-Length is not a single non-negative decimal that fits in u64.
    #[error("invalid Content-Length")]
    ContentLength,
    /// Content-Length and Transfer-Encoding together (RFC 9112 §6.1: a
    /// smuggling vector, refused outright).
    #[error("Content-Length together with Transfer-Encoding")]
    LengthAndTransferEncoding,
    /// Transfer-Encoding in an HTTP/1.0 request, which has none (RFC 9112
    /// §6.1: faulty framing): a 1.0 hop before this one may have read the
    /// body otherwise, so it is refused, as nginx refuses it.
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    TransferEncodingInHttp10,
    /// A transfer coding this server does not decode (anything but chunked).
    #[error("unsupported transfer coding")]
    UnsupportedTransferCoding,
    /// `chunked` appears, but not as the final coding, or more than once.
    #[error("chunked is not the final transfer coding")]
    ChunkedNotLast,
    /// The chunked body does not follow RFC 9112 §7.1.
    #[error("malformed chunked body")]
    Chunk,
    /// The header block is larger than `max-header-bytes`.
    #[error("request header block too large")]
    HeadersTooLarge,
    /// More header fields than `max-headers`.
    #[error("too many header fields")]
    TooManyHeaders,
    /// The request target is longer than `max-uri-bytes`.
    #[error("request target too long")]
    UriTooLong,
    /// The body is (or declares itself) larger than `max-body-bytes`.
    #[error("request body too large")]
    BodyTooLarge,
    /// An HTTP version other than 1.0 and 1.1 (HTTP/2 prior knowledge included).
    #[error("HTTP version not supported")]
    Version,
    /// An `Expect` value other than `100-continue` (RFC 9110 §10.1.1).
    #[error("unsupported expectation")]
    Expectation,
    /// A method this server never implements (CONNECT: it is not a proxy).
    #[error("method not implemented")]
    MethodNotImplemented,
    /// The head did not arrive within `header-timeout` (slowloris).
    #[error("timed out reading the request head")]
    HeadTimeout,
    /// The body stalled for longer than `body-timeout`.
    #[error("timed out reading the request body")]
    BodyTimeout,
    /// The client closed (or reset) its connection in the middle of a
    /// request head: nothing is sent, but the request is logged, as nginx
    /// logs one ("client prematurely closed connection"), with 400.
    #[error("closed before the request head ended")]
    HeadCutShort,
}

impl ParseError {
    /// Every variant, for tests and for metrics that count errors by kind.
    pub const ALL: [ParseError; 21] = [
        Self::RequestLine,
        Self::HeaderField,
        Self::Target,
        Self::MissingHost,
        Self::DuplicateHost,
        Self::ContentLength,
        Self::LengthAndTransferEncoding,
        Self::TransferEncodingInHttp10,
        Self::UnsupportedTransferCoding,
        Self::ChunkedNotLast,
        Self::Chunk,
        Self::HeadersTooLarge,
        Self::TooManyHeaders,
        Self::UriTooLong,
        Self::BodyTooLarge,
        Self::Version,
        Self::Expectation,
        Self::MethodNotImplemented,
        Self::HeadTimeout,
        Self::BodyTimeout,
        Self::HeadCutShort,
    ];
}

impl ParseError {
    /// A stable snake_case name, for metric labels.
    pub fn name(self) -> &'static str {
        use ParseError::*;
        match self {
            RequestLine => "request_line",
            HeaderField => "header_field",
            Target => "target",
            MissingHost => "missing_host",
            DuplicateHost => "duplicate_host",
            ContentLength => "content_length",
            LengthAndTransferEncoding => "length_and_transfer_encoding",
            TransferEncodingInHttp10 => "transfer_encoding_in_http10",
            UnsupportedTransferCoding => "unsupported_transfer_coding",
            ChunkedNotLast => "chunked_not_last",
            Chunk => "chunk",
            HeadersTooLarge => "headers_too_large",
            TooManyHeaders => "too_many_headers",
            UriTooLong => "uri_too_long",
            BodyTooLarge => "body_too_large",
            Version => "version",
            Expectation => "expectation",
            MethodNotImplemented => "method_not_implemented",
            HeadTimeout => "head_timeout",
            BodyTimeout => "body_timeout",
            HeadCutShort => "head_cut_short",
        }
    }
}

/// The status a refused request is answered with; the one place that decides it.
pub fn status_for(err: ParseError) -> Status {
    use ParseError::*;
    match err {
        RequestLine
        | HeaderField
        | Target
        | MissingHost
        | DuplicateHost
        | ContentLength
        | LengthAndTransferEncoding
        | TransferEncodingInHttp10
        // RFC 9112 §6.3: the body's length cannot be told; a MUST.
        | ChunkedNotLast
        | Chunk
        | HeadCutShort => Status::BAD_REQUEST,
        UnsupportedTransferCoding | MethodNotImplemented => Status::NOT_IMPLEMENTED,
        HeadersTooLarge | TooManyHeaders => Status::REQUEST_HEADER_FIELDS_TOO_LARGE,
        UriTooLong => Status::URI_TOO_LONG,
        BodyTooLarge => Status::PAYLOAD_TOO_LARGE,
        Version => Status::HTTP_VERSION_NOT_SUPPORTED,
        Expectation => Status::EXPECTATION_FAILED,
        HeadTimeout | BodyTimeout => Status::REQUEST_TIMEOUT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_a_client_or_server_error() {
        for e in ParseError::ALL {
            let code = status_for(e).code();
            assert!((400..600).contains(&code), "{e:?} -> {code}");
        }
    }

    #[test]
    fn the_statuses_the_rfc_asks_for() {
        assert_eq!(status_for(ParseError::HeadersTooLarge).code(), 431);
        assert_eq!(status_for(ParseError::UriTooLong).code(), 414);
        assert_eq!(status_for(ParseError::BodyTooLarge).code(), 413);
        assert_eq!(status_for(ParseError::Version).code(), 505);
        assert_eq!(
            status_for(ParseError::UnsupportedTransferCoding).code(),
            501
        );
        assert_eq!(status_for(ParseError::ChunkedNotLast).code(), 400);
        assert_eq!(status_for(ParseError::HeadTimeout).code(), 408);
    }
}
