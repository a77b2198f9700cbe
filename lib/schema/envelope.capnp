@0x924caf078fcdff2d;
# The messaging contract's envelopes (docs/messaging.md).

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("shmbus::schema");

# What a handler runtime publishes to `<topic>.dlq` when a message's retries are
# exhausted or its handler rejected it: why, how often, when, by whom, under which
# policy, where the message came from, and the message itself (payload unchanged).
struct DeadLetter {
  code @0 :UInt32;              # the handler's error code (0: none given)
  message @1 :Text;             # the handler's reason, or the exception's what()
  attempts @2 :UInt32;          # handler calls made for this message
  firstFailureNs @3 :UInt64;    # CLOCK_MONOTONIC of the first failed attempt
  lastFailureNs @4 :UInt64;     # ... of the last one
  handler @5 :Text;             # HandlerOptions::name
  retry @6 :RetrySpec;          # the policy that was exhausted
  reason @7 :Reason;
  originalTopic @8 :Text;
  partition @9 :UInt32;
  sequence @10 :UInt64;         # the original frame's partition sequence
  messageId @11 :UInt64;
  schemaId @12 :UInt64;
  producerId @13 :UInt32;
  timestampNs @14 :UInt64;      # the original frame's timestamp
  payload @15 :Data;            # the original payload, byte for byte

  enum Reason {
    exhausted @0;               # every attempt of the retry policy failed
    rejected @1;                # the handler said the message can never succeed
  }
}

struct RetrySpec {
  maxAttempts @0 :UInt32;
  initialBackoffNs @1 :UInt64;
  maxBackoffNs @2 :UInt64;
  multiplier @3 :Float64;
  jitter @4 :Float64;
}
