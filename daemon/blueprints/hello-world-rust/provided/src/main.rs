//! Hello world in Rust: greets the caller by the name in the event.
//!
//! AWS's `lambda_runtime` asks the Runtime API for events and answers them;
//! the handler is an async function from the event to a JSON value.
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};

async fn handler(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let (payload, ctx) = event.into_parts();
    let name = payload
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("world");
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".into());
    println!("greeting {name} (request {})", ctx.request_id);
    Ok(json!({ "message": format!("{greeting}, {name}!") }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handler)).await
}
