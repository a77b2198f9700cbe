// libFuzzer target over the shmbusd request decoder (daemon/src/request_codec.cpp):
// one control-socket packet in, decode_request() must return true or false with a
// reason, never crash, hang or read out of bounds. When it accepts a request, the
// parts the registry reads next (the topic spec) are decoded too.
// Built and run by tests/fuzz/run.sh with clang++ -fsanitize=fuzzer,address.
// tests/fuzz/fuzz_replay_test.cpp links the same entry point with gcc and replays
// the corpus and tests/fuzz/crashes/control/ (a crash found is checked in there).
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "core.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shmbus::daemon;
  DecodedRequest req;
  shmbus::proto::ErrorCode code{};
  std::string err;
  uint64_t id = 0;
  if (!decode_request(std::span<const uint8_t>(data, size), req, code, err, id)) {
    if (err.empty()) __builtin_trap();  // a refusal must say why
    (void)error_frame(id, code, err);
    return 0;
  }
  try {
    auto r = req.root();
    if (r.which() == shmbus::proto::Request::CREATE_TOPIC) {
      TopicSettings t;
      std::string e2;
      (void)spec_from_proto(r.getCreateTopic(), t, e2);
    }
  } catch (const kj::Exception&) {
    // The decoder walked the whole message with limits: a throw here is a bug.
    __builtin_trap();
  }
  return 0;
}
