//! Tool calling through real HTTP with the fixture model, whose random weights call a tool only
//! when the grammar forces it: a named or required call comes back as `message.tool_calls`
//! (and as `delta.tool_calls` when streamed) with arguments valid for the function's schema,
//! is charged as any answer, and the call and its result are accepted in the next turn.

use serde_json::{Value, json};

use crate::completions::{api_long_context, sse_data};

const MODEL: &str = "tiny-chat";

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object",
                "properties": {"city": {"type": "string", "maxLength": 8}, "unit": {"enum": ["c", "f"]}},
                "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time",
            "parameters": {"type": "object", "properties": {"zone": {"type": "integer", "minimum": -12, "maximum": 14}},
                "required": ["zone"]}}}
    ])
}

fn body(choice: Value, extra: Value) -> Value {
    let mut b = json!({
        "model": MODEL, "messages": [{"role": "user", "content": "Weather in Nairobi?"}],
        "tools": tools(), "tool_choice": choice, "max_tokens": 200, "seed": 3,
    });
    b.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    b
}

/// A call's arguments hold to its function's schema.
fn assert_valid(name: &str, arguments: &str) {
    let a: Value = serde_json::from_str(arguments).unwrap_or_else(|e| panic!("{e}: {arguments}"));
    let o = a.as_object().unwrap();
    match name {
        "get_weather" => {
            assert_eq!(o.len(), 2, "{arguments}");
            assert!(o["city"].as_str().unwrap().chars().count() <= 8);
            assert!(["c", "f"].contains(&o["unit"].as_str().unwrap()));
        }
        "get_time" => {
            assert!(
                (-12..=14).contains(&o["zone"].as_i64().unwrap()),
                "{arguments}"
            );
        }
        other => panic!("no such function {other}"),
    }
}

#[tokio::test]
async fn forced_calls_come_back_as_tool_calls_whole_and_streamed() {
    let (api, _model) = api_long_context().await;
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    let v = api
        .ok("/v1/chat/completions", &body(named.clone(), json!({})))
        .await;
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["type"], "function");
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let arguments = calls[0]["function"]["arguments"].as_str().unwrap();
    assert_valid("get_weather", arguments);
    let (p, c, _, _) = api.usage_event(v["id"].as_str().unwrap()).await;
    assert_eq!(
        (p, c),
        (
            v["usage"]["prompt_tokens"].as_i64().unwrap(),
            v["usage"]["completion_tokens"].as_i64().unwrap()
        )
    );

    // The same seed streamed: the call arrives as one delta, then finish_reason tool_calls.
    let r = api
        .post(
            "/v1/chat/completions",
            &body(named, json!({"stream": true})),
        )
        .await;
    let chunks: Vec<Value> = sse_data(&r.text().await.unwrap())
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let streamed: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(streamed.len(), 1);
    assert_eq!(streamed[0]["index"], 0);
    assert_eq!(streamed[0]["function"]["arguments"], arguments);
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "", "nothing of the call leaks as content");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );

    // `required` without parallel calls: exactly one call to either function.
    for seed in 1..4 {
        let v = api
            .ok(
                "/v1/chat/completions",
                &body(
                    json!("required"),
                    json!({"parallel_tool_calls": false, "seed": seed}),
                ),
            )
            .await;
        let calls = v["choices"][0]["message"]["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 1, "{v}");
        let f = &calls[0]["function"];
        assert_valid(
            f["name"].as_str().unwrap(),
            f["arguments"].as_str().unwrap(),
        );
    }

    // The call and its result in the next turn.
    let next = json!({
        "model": MODEL, "tools": tools(), "max_tokens": 5, "ignore_eos": true,
        "messages": [
            {"role": "user", "content": "Weather in Nairobi?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": calls[0]["id"], "type": "function",
                 "function": {"name": "get_weather", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": calls[0]["id"], "content": "{\"temperature\": 24}"}
        ]
    });
    let v = api.ok("/v1/chat/completions", &next).await;
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(api.open_holds().await, 0);
}

#[tokio::test]
async fn tool_requests_that_cannot_work_are_refused_by_name() {
    let (api, _model) = api_long_context().await;
    let cases = [
        (
            body(
                json!({"type": "function", "function": {"name": "launch"}}),
                json!({}),
            ),
            "tool_choice",
        ),
        (
            body(
                json!("auto"),
                json!({"response_format": {"type": "json_object"}, "tool_choice": "required"}),
            ),
            "response_format",
        ),
        (
            json!({"model": MODEL, "prompt": "x", "tools": tools()}),
            "tools",
        ),
        (
            json!({"model": MODEL, "messages": [
                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{not json"}}]}]}),
            "messages",
        ),
    ];
    for (b, param) in cases {
        let path = if b.get("prompt").is_some() {
            "/v1/completions"
        } else {
            "/v1/chat/completions"
        };
        let e = api
            .refused(path, &b, reqwest::StatusCode::BAD_REQUEST)
            .await;
        assert_eq!(e["param"], param, "{b}: {e}");
    }
    assert_eq!(api.open_holds().await, 0);
}
