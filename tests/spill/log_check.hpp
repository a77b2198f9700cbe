// Catch2 checks of a spill log's contents, shared by the crash, power-loss and
// disk-full tests.
#pragma once

#include <catch2/catch.hpp>
#include <cstdint>
#include <string>

#include "shmbus/spill_format.hpp"
#include "spill_util.hpp"

namespace shmbus::test {

// Every sequence in [from, to] is in the log, in order, intact; no corrupt record.
inline void check_log_range(const std::string& pdir, uint64_t from, uint64_t to) {
  if (from > to) return;
  spill::ChunkArena arena;
  spill::LogReader rd(pdir, arena);
  rd.seek_sequence(from);
  spill::RecordView rv;
  for (uint64_t expect = from; expect <= to; ++expect) {
    auto n = rd.next(rv);
    // Millions of records: the assertions (and their message) only when one fails.
    if (n != spill::LogReader::Next::ok || rv.seq() != expect ||
        !payload_ok(rv.seq(), rv.payload, rv.payload_len)) [[unlikely]] {
      INFO("expected sequence " << expect << " in " << pdir);
      REQUIRE(n == spill::LogReader::Next::ok);
      REQUIRE(rv.seq() == expect);
      REQUIRE(payload_ok(rv.seq(), rv.payload, rv.payload_len));
    }
    arena.release(rv.seq());
  }
  REQUIRE(rd.skipped_corrupt() == 0);
}

// The log read from its start is a clean prefix of the produced stream: sequences 1, 2,
// ... in order, each intact with the payload produced for it (nothing torn, nothing
// invented), no corrupt record skipped, no gap, and the reader ends at a clean end.
// Returns the last sequence (0: an empty log).
inline uint64_t check_log_prefix(const std::string& pdir) {
  spill::ChunkArena arena;
  spill::LogReader rd(pdir, arena);
  rd.seek_earliest();
  spill::RecordView rv;
  uint64_t expect = 1;
  spill::LogReader::Next n;
  while ((n = rd.next(rv)) == spill::LogReader::Next::ok) {
    if (rv.seq() != expect || !payload_ok(rv.seq(), rv.payload, rv.payload_len)) [[unlikely]] {
      INFO("expected sequence " << expect << " in " << pdir);
      REQUIRE(rv.seq() == expect);
      REQUIRE(payload_ok(rv.seq(), rv.payload, rv.payload_len));
    }
    arena.release(rv.seq());
    ++expect;
  }
  INFO("the log in " << pdir << " after sequence " << expect - 1);
  CHECK(n == spill::LogReader::Next::end);
  CHECK(rd.skipped_corrupt() == 0);
  CHECK(rd.gaps() == 0);
  return expect - 1;
}

}  // namespace shmbus::test
