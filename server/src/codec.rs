//! gRPC codec refusals in the API's own terms. tonic refuses oversized and
//! malformed messages before a handler runs, with statuses that differ from
//! the ones every other refusal of the same kind gets; these functions
//! translate them so both transports answer one problem with one code.

/// How tonic's codec refuses a message, and the status our API gives it
/// instead (matched on tonic's code and message; `message` may be the
/// percent-encoded `grpc-message` header):
///
/// - over the size limit: tonic says OUT_OF_RANGE; gRPC's reference
///   implementations and our API say RESOURCE_EXHAUSTED;
/// - bytes that are not a valid protobuf message: tonic says INTERNAL
///   (gRPC's status guide); the fault is the client's, so INVALID_ARGUMENT.
fn translate_codec_error(code: tonic::Code, message: &str) -> Option<(tonic::Code, &'static str)> {
    let has = |words: &str| message.contains(words) || message.contains(&words.replace(' ', "%20"));
    match code {
        tonic::Code::OutOfRange if has("length too large") => Some((
            tonic::Code::ResourceExhausted,
            "limits.max_message_bytes exceeded",
        )),
        tonic::Code::Internal if has("failed to decode Protobuf message") => {
            Some((tonic::Code::InvalidArgument, "malformed request message"))
        }
        _ => None,
    }
}

/// [`translate_codec_error`] for the trailers-only responses tonic writes
/// when it refuses a unary request before our handler runs.
pub(crate) fn translate_codec_response<B>(
    mut response: ::http::Response<B>,
) -> ::http::Response<B> {
    let headers = response.headers_mut();
    let code = headers
        .get("grpc-status")
        .and_then(|s| s.to_str().ok()?.parse::<i32>().ok())
        .map(tonic::Code::from_i32);
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if let Some((code, prefix)) = code.and_then(|c| translate_codec_error(c, &message)) {
        headers.insert("grpc-status", ::http::HeaderValue::from(code as i32));
        if let Ok(value) = ::http::HeaderValue::from_str(&format!("{prefix}: {message}")) {
            headers.insert("grpc-message", value);
        }
    }
    response
}
