//! Reading a server-sent event stream from a `fetch` POST in the browser (`EventSource` only
//! does GET). Aborting the controller's signal ends the read; the server sees the connection
//! close and cancels the job.

use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    AbortSignal, ReadableStreamDefaultReader, RequestCredentials, RequestInit, Response,
};

#[derive(Debug, Clone, PartialEq)]
pub enum StreamError {
    /// The signal was aborted (the user pressed Stop).
    Aborted,
    /// The request failed; the message is meant for people.
    Failed(String),
}

fn js_message(v: &JsValue) -> String {
    Reflect::get(v, &"message".into())
        .ok()
        .and_then(|m| m.as_string())
        .or_else(|| v.as_string())
        .unwrap_or_else(|| "the connection failed".into())
}

fn is_abort(v: &JsValue) -> bool {
    Reflect::get(v, &"name".into())
        .ok()
        .and_then(|n| n.as_string())
        .is_some_and(|n| n == "AbortError")
}

fn failure(v: JsValue) -> StreamError {
    if is_abort(&v) {
        StreamError::Aborted
    } else {
        StreamError::Failed(js_message(&v))
    }
}

/// Splits complete events off the front of `buf` and hands each `data:` payload to `on_data`.
/// Event boundaries are ASCII, so each complete event is whole UTF-8.
pub fn drain_events(buf: &mut Vec<u8>, on_data: &mut impl FnMut(&str)) {
    while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
        let event: Vec<u8> = buf.drain(..end + 2).collect();
        let text = String::from_utf8_lossy(&event);
        for line in text.lines() {
            if let Some(data) = line.strip_prefix("data: ") {
                on_data(data);
            }
        }
    }
}

/// POSTs `body` as JSON to `url` (same origin, with the session cookie) and calls `on_data`
/// with each event's data as it arrives. An error status is read as OpenAI's error body.
pub async fn post_events(
    url: &str,
    body: &str,
    signal: Option<&AbortSignal>,
    mut on_data: impl FnMut(&str),
) -> Result<(), StreamError> {
    let window = web_sys::window().ok_or(StreamError::Failed("no window".into()))?;
    let init = RequestInit::new();
    init.set_method("POST");
    init.set_body(&JsValue::from_str(body));
    init.set_credentials(RequestCredentials::SameOrigin);
    let headers = web_sys::Headers::new().map_err(failure)?;
    headers
        .set("content-type", "application/json")
        .map_err(failure)?;
    init.set_headers(&headers);
    if let Some(s) = signal {
        init.set_signal(Some(s));
    }
    let response: Response = JsFuture::from(window.fetch_with_str_and_init(url, &init))
        .await
        .map_err(failure)?
        .dyn_into()
        .map_err(failure)?;
    if !response.ok() {
        let text = JsFuture::from(response.text().map_err(failure)?)
            .await
            .map_err(failure)?
            .as_string()
            .unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("The request failed ({}).", response.status()));
        return Err(StreamError::Failed(message));
    }
    let reader: ReadableStreamDefaultReader = response
        .body()
        .ok_or(StreamError::Failed("the response has no body".into()))?
        .get_reader()
        .dyn_into()
        .map_err(|o: js_sys::Object| failure(o.into()))?;
    let mut buf = Vec::new();
    loop {
        let chunk = JsFuture::from(reader.read()).await.map_err(failure)?;
        let done = Reflect::get(&chunk, &"done".into())
            .ok()
            .and_then(|d| d.as_bool())
            .unwrap_or(true);
        if done {
            break;
        }
        let value: Uint8Array = Reflect::get(&chunk, &"value".into())
            .map_err(failure)?
            .dyn_into()
            .map_err(failure)?;
        buf.extend(value.to_vec());
        drain_events(&mut buf, &mut on_data);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_reads_come_out_whole() {
        let mut seen = Vec::new();
        let mut buf = b"data: {\"a\":1}\n\ndata: caf".to_vec();
        drain_events(&mut buf, &mut |d| seen.push(d.to_string()));
        assert_eq!(seen, vec!["{\"a\":1}"]);
        // The rest of a two-byte character arrives in the next read.
        buf.extend("é\n\n: keep-alive\n\ndata: [DONE]\n\n".as_bytes());
        drain_events(&mut buf, &mut |d| seen.push(d.to_string()));
        assert_eq!(seen, vec!["{\"a\":1}", "café", "[DONE]"]);
        assert!(buf.is_empty());
    }
}
