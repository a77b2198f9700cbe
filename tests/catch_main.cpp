// Catch2 (v2) main for every test binary. "--warn NoTests" is always on: a test filter
// that matches no test case makes the binary exit 2 instead of passing with nothing run.
// A test binary that needs set-up before its cases (tests/spill/disk_full_test.cpp
// mounts a tmpfs) defines shmbus_test_setup(): a non-zero return is the binary's exit
// status (77 = skipped) and no case runs; shmbus_test_teardown() runs after the cases.
// (One main for all: Catch2's implementation is compiled once, not once per such test.)
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <vector>

int shmbus_test_setup() __attribute__((weak));
void shmbus_test_teardown() __attribute__((weak));

int main(int argc, char** argv) {
  if (shmbus_test_setup)
    if (int rc = shmbus_test_setup(); rc != 0) return rc;
  std::vector<char*> args(argv, argv + argc);
  static char warn[] = "--warn", no_tests[] = "NoTests";
  args.insert(args.begin() + (argc > 0 ? 1 : 0), {warn, no_tests});
  const int rc = Catch::Session().run(static_cast<int>(args.size()), args.data());
  if (shmbus_test_teardown) shmbus_test_teardown();
  return rc;
}
