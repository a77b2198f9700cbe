// Catch2 check of a spill log's contents, shared by the crash tests.
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
    INFO("expected sequence " << expect << " in " << pdir);
    REQUIRE(n == spill::LogReader::Next::ok);
    REQUIRE(rv.seq() == expect);
    REQUIRE(payload_ok(rv.seq(), rv.payload, rv.payload_len));
    arena.release(rv.seq());
  }
  REQUIRE(rd.skipped_corrupt() == 0);
}

}  // namespace shmbus::test
