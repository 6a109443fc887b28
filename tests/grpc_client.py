"""A gRPC client of flintd that is not ours: Python's grpcio, with stubs
generated from proto/ at run time. Calls health, reflection's service list
Invoke, and an asynchronous invoke with its record, and prints one JSON document with what it saw.

usage: grpc_client.py ENDPOINT FUNCTION_NAME

A TCP endpoint is reached with mutual TLS: the CA, certificate and key come
from FLINT_TLS_CA, FLINT_TLS_CERT and FLINT_TLS_KEY.
"""
import json
import os
import sys
import tempfile

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(HERE, "..", "proto", "proto")


def generate(out):
    rc = protoc.main([
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "flint/node/v1/node.proto",
    ])
    if rc != 0:
        raise SystemExit(f"protoc failed: {rc}")
    for d in ["flint", "flint/node", "flint/node/v1"]:
        open(os.path.join(out, d, "__init__.py"), "a").close()
    sys.path.insert(0, out)


def main():
    endpoint, function = sys.argv[1], sys.argv[2]
    target = "unix://" + endpoint[len("unix:"):] if endpoint.startswith("unix:") else endpoint
    with tempfile.TemporaryDirectory() as out:
        generate(out)
        from flint.node.v1 import node_pb2, node_pb2_grpc

        # The default authority of a unix target is its path, which is not a
        # valid HTTP/2 authority; name the host instead.
        if endpoint.startswith("unix:"):
            ch = grpc.insecure_channel(target, options=[("grpc.default_authority", "localhost")])
        else:
            def read(var):
                with open(os.environ[var], "rb") as f:
                    return f.read()
            creds = grpc.ssl_channel_credentials(
                root_certificates=read("FLINT_TLS_CA"),
                private_key=read("FLINT_TLS_KEY"),
                certificate_chain=read("FLINT_TLS_CERT"))
            ch = grpc.secure_channel(target, creds)
        with ch:
            health = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="flint.node.v1.Functions"), timeout=10)
            refl = reflection_pb2_grpc.ServerReflectionStub(ch)
            answers = refl.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
            services = [s.name for a in answers for s in a.list_services_response.service]
            fns = node_pb2_grpc.FunctionsStub(ch)
            r = fns.Invoke(node_pb2.InvokeRequest(
                function_name=function,
                payload=json.dumps({"from": "grpcio"}).encode(),
                log_type=node_pb2.TAIL,
            ), timeout=120)
            # Asynchronous: an event answered 202, its success record read
            # from an event bus as a controller would.
            bus = "grpcio-" + function
            fns.PutFunctionEventInvokeConfig(node_pb2.PutFunctionEventInvokeConfigRequest(
                function_name=function,
                destination_config=node_pb2.DestinationConfig(on_success=node_pb2.OnSuccess(
                    destination=f"arn:aws:events:us-east-1:000000000000:event-bus/{bus}")),
            ), timeout=10)
            queued = fns.Invoke(node_pb2.InvokeRequest(
                function_name=function,
                invocation_type=node_pb2.EVENT,
                payload=json.dumps({"from": "grpcio", "async": True}).encode(),
            ), timeout=30)
            records = fns.SubscribeInvocationRecords(
                node_pb2.SubscribeInvocationRecordsRequest(event_bus=bus, follow=True), timeout=120)
            first = next(iter(records))
            records.cancel()
            record = json.loads(first.record)
            try:
                fns.GetFunction(node_pb2.GetFunctionRequest(function_name="no-such-function"), timeout=10)
                missing = "found"
            except grpc.RpcError as e:
                missing = f"{e.code().name}: {e.details()}"
        print(json.dumps({
            "health": health_pb2.HealthCheckResponse.ServingStatus.Name(health.status),
            "services": services,
            "status_code": r.status_code,
            "function_error": r.function_error,
            "executed_version": r.executed_version,
            "payload": json.loads(r.payload),
            "has_log_result": bool(r.log_result),
            "missing": missing,
            "async": {
                "status_code": queued.status_code,
                "request_id": queued.request_id,
                "record_request_id": record["requestContext"]["requestId"],
                "condition": record["requestContext"]["condition"],
                "response": record["responsePayload"],
            },
        }))


if __name__ == "__main__":
    main()
