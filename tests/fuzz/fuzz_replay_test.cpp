// Replays the committed fuzz corpus and every crash found by a fuzz target
// (tests/fuzz/corpus/<target>/, tests/fuzz/crashes/<target>/; SHMBUS_FUZZ_TARGET
// names it) through the same entry point, built with the project's compiler: a
// crash fixed once stays fixed.
#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

#ifndef SHMBUS_FUZZ_TARGET
#define SHMBUS_FUZZ_TARGET "control"
#endif

TEST_CASE("the " SHMBUS_FUZZ_TARGET " fuzz corpus and checked-in crashes replay without a crash", "[fuzz]") {
  size_t n = 0;
  for (const char* sub : {"corpus/" SHMBUS_FUZZ_TARGET, "crashes/" SHMBUS_FUZZ_TARGET}) {
    std::filesystem::path dir = std::filesystem::path(SHMBUS_FUZZ_DIR) / sub;
    for (auto& e : std::filesystem::directory_iterator(dir)) {
      if (!e.is_regular_file() || e.path().filename().string().front() == '.') continue;
      std::ifstream f(e.path(), std::ios::binary);
      std::vector<uint8_t> b((std::istreambuf_iterator<char>(f)), {});
      INFO(e.path());
      CHECK(LLVMFuzzerTestOneInput(b.data(), b.size()) == 0);
      ++n;
    }
  }
  CHECK(n >= 10);
}
