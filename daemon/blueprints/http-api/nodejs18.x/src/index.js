// An HTTP-style handler behind an API Gateway proxy integration.
//
// GET /hello?name=NAME answers a JSON greeting; POST /hello takes
// {"name": ...} as its body; anything else is a 404 or a 405.
const respond = (statusCode, payload) => ({
  statusCode,
  headers: { "content-type": "application/json" },
  body: JSON.stringify(payload),
});

exports.handler = async (event) => {
  const path = event.path || "/";
  const method = event.httpMethod || "GET";
  if (path !== "/hello") {
    return respond(404, { message: `no route for ${path}` });
  }
  let name;
  if (method === "GET") {
    name = (event.queryStringParameters || {}).name || "world";
  } else if (method === "POST") {
    let body = event.body || "{}";
    if (event.isBase64Encoded) {
      body = Buffer.from(body, "base64").toString();
    }
    try {
      name = JSON.parse(body).name || "world";
    } catch {
      return respond(400, { message: "the body is not a JSON object" });
    }
  } else {
    return respond(405, { message: `${method} is not allowed` });
  }
  return respond(200, { message: `hello, ${name}`, method, path });
};
