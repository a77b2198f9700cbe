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

# The optional header extension of the messaging contract (docs/messaging.md,
# "The envelope"). The 48-byte frame header stays as it is for everyone; a message
# that needs correlation, causation, trace context, a reply-to topic or a content
# version is published as an Envelope around its payload, and the frame's schema id
# is the Envelope's type id (that is the flag). The frame's message id, producer,
# sequence and time stay in the frame header.
struct Envelope {
  payloadSchemaId @0 :UInt64;   # the payload's Cap'n Proto root type id (0: opaque bytes)
  payload @1 :Data;             # the message, byte for byte (a flat Cap'n Proto message or any bytes)
  correlationId @2 :UInt64;     # request/response: the request's id, echoed by the reply (0: none)
  causationId @3 :UInt64;       # the message id of the message that caused this one (0: none)
  replyTo @4 :Text;             # the topic a reply goes to (empty: none)
  trace @5 :TraceContext;       # W3C trace context (absent: none)
  contentVersion @6 :UInt32;    # the payload schema's version as the application numbers it (0: unsaid)
  status @7 :UInt32;            # a reply's application status (0: ok)
}

# W3C Trace Context `traceparent` (version 00) as numbers, plus `tracestate` verbatim:
# traceparent = "00-" + hex32(traceIdHigh, traceIdLow) + "-" + hex16(parentId) + "-" + hex2(flags).
struct TraceContext {
  traceIdHigh @0 :UInt64;
  traceIdLow @1 :UInt64;
  parentId @2 :UInt64;          # the span id of the sender's span
  flags @3 :UInt8;              # 0x01: sampled
  traceState @4 :Text;          # W3C tracestate, opaque here (<= 512 bytes)
}
