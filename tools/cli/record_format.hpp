// The file `shmbus record` writes and `shmbus play` reads (docs/record-format.md is
// normative; update it, and kRecordVersion on an incompatible change, with these).
//
//   +----------------------+  FileHeader, 32 bytes
//   | "SHMBREC\0" version  |
//   +----------------------+  topic_count times:
//   | TopicHeader (32 B)   |    name (name_len bytes), schema nodes (schema_len bytes),
//   | name | schema | pad  |    zero padding to a multiple of 8
//   +----------------------+  records, until the end marker:
//   | RecordHeader (48 B)  |    payload (payload_len bytes, no padding)
//   | payload              |
//   +----------------------+
//   | RecordHeader, topic = kEndMarker, sequence = number of records |
//
// All integers little-endian (the only byte order shmbus runs on). Every part carries
// a CRC32C (Castagnoli, shmbus::spill::crc32c). A reader treats the file as hostile:
// it checks magic, version, sizes, CRCs, indexes and the order of receive times
// before it trusts a byte, and allocates a payload only after checking that the file
// holds that many bytes.
#pragma once

#include <cstddef>
#include <cstdint>

namespace shmbus::cli::rec {

inline constexpr char kMagic[8] = {'S', 'H', 'M', 'B', 'R', 'E', 'C', '\0'};
inline constexpr uint16_t kRecordVersion = 1;
inline constexpr uint16_t kEndMarker = 0xFFFF;
inline constexpr uint32_t kMaxTopics = 4096;
inline constexpr uint32_t kMaxNameLen = 255;
inline constexpr uint32_t kMaxSchemaLen = 128 * 1024;  // the registry's limit (kMaxSchemaBytes)
inline constexpr uint32_t kMaxPayload = 1u << 30;

struct FileHeader {
  char magic[8];           //  0 "SHMBREC\0"
  uint16_t version;        //  8 kRecordVersion
  uint16_t header_size;    // 10 sizeof(FileHeader)
  uint32_t topic_count;    // 12 1..kMaxTopics
  uint64_t start_wall_ns;  // 16 CLOCK_REALTIME when the recording started
  uint32_t flags;          // 24 0 (a reader refuses bits it does not know)
  uint32_t crc;            // 28 crc32c of bytes [0, 28)
};
static_assert(sizeof(FileHeader) == 32, "update docs/record-format.md");
static_assert(offsetof(FileHeader, start_wall_ns) == 16, "update docs/record-format.md");
static_assert(offsetof(FileHeader, crc) == 28, "update docs/record-format.md");

struct TopicHeader {
  uint32_t crc;              //  0 crc32c of bytes [4, 32), then the name, then the schema bytes
  uint16_t name_len;         //  4 1..kMaxNameLen
  uint16_t reserved;         //  6 0
  uint32_t partitions;       //  8 the topic's partition count when recorded
  uint32_t schema_len;       // 12 0 (no schema) .. kMaxSchemaLen
  uint64_t topic_schema_id;  // 16 the topic's declared root type id (0: any)
  uint64_t root_id;          // 24 root struct id of the schema nodes (0 when schema_len is 0)
};
static_assert(sizeof(TopicHeader) == 32, "update docs/record-format.md");
static_assert(offsetof(TopicHeader, topic_schema_id) == 16, "update docs/record-format.md");

struct RecordHeader {
  uint32_t crc;          //  0 crc32c of bytes [4, 48), then the payload
  uint32_t payload_len;  //  4 0..kMaxPayload (0 for the end marker)
  uint16_t topic;        //  8 index into the topic table, or kEndMarker
  uint16_t flags;        // 10 0
  uint32_t partition;    // 12 < the topic's partitions
  uint64_t recv_ns;      // 16 CLOCK_MONOTONIC ns since the recording started; never decreases
  uint64_t sequence;     // 24 the frame's sequence (end marker: the number of records)
  uint64_t message_id;   // 32 the frame's message id
  uint64_t schema_id;    // 40 the frame's schema id
};
static_assert(sizeof(RecordHeader) == 48, "update docs/record-format.md");
static_assert(offsetof(RecordHeader, recv_ns) == 16, "update docs/record-format.md");
static_assert(offsetof(RecordHeader, schema_id) == 40, "update docs/record-format.md");

constexpr uint32_t pad8(uint32_t n) { return (8 - n % 8) % 8; }

}  // namespace shmbus::cli::rec
