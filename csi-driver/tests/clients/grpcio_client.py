"""A gRPC C-core client (Python grpcio from PyPI) calling tether-csi over its unix socket the
way such clients do by default: no :authority override, so the socket path is sent there.
Messages are built by hand (field 1, length-delimited) to need no generated code.
Prints one line per call; exits non-zero on the first unexpected answer."""

import sys

import grpc


def call(channel, method, request=b""):
    stub = channel.unary_unary(
        method,
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    return stub(request, timeout=15)


def field1(value: bytes) -> bytes:
    assert len(value) < 128
    return b"\x0a" + bytes([len(value)]) + value


def main() -> None:
    socket = sys.argv[1]
    print("grpcio", grpc.__version__)
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        info = call(channel, "/csi.v1.Identity/GetPluginInfo")
        assert b"nfs.tether.dev" in info, info
        print("GetPluginInfo ok")
        call(channel, "/csi.v1.Identity/Probe")
        print("Probe ok")
        call(channel, "/csi.v1.Identity/GetPluginCapabilities")
        print("GetPluginCapabilities ok")
        call(channel, "/csi.v1.Controller/ControllerGetCapabilities")
        print("ControllerGetCapabilities ok")
        # Errors arrive as gRPC statuses, with their message.
        try:
            call(channel, "/csi.v1.Controller/ControllerGetVolume", field1(b"not-a-volume"))
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, (e.code(), e.details())
            print("ControllerGetVolume NOT_FOUND ok:", e.details())
        else:
            raise AssertionError("ControllerGetVolume of an unknown id succeeded")
        # Many calls on one connection (the HPACK context carries over).
        for _ in range(50):
            call(channel, "/csi.v1.Identity/Probe")
        print("50 more calls ok")


if __name__ == "__main__":
    main()
