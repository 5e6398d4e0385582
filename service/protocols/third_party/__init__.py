"""The ecosystem's protocol definitions, from upstream: the Open Inference Protocol's and
TensorFlow Serving's gRPC APIs (.proto, Apache-2.0, each under a package of this project's own;
see the header of each), and the message classes protoc generates from them
(`scripts/generate-protos`; not edited by hand)."""
