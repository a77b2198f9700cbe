// Catch2 (v2) main for every test binary. "--warn NoTests" is always on: a test filter
// that matches no test case makes the binary exit 2 instead of passing with nothing run.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <vector>

int main(int argc, char** argv) {
  std::vector<char*> args(argv, argv + argc);
  static char warn[] = "--warn", no_tests[] = "NoTests";
  args.insert(args.begin() + (argc > 0 ? 1 : 0), {warn, no_tests});
  return Catch::Session().run(static_cast<int>(args.size()), args.data());
}
