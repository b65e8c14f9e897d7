// Runs the fuzz target's body over files and directories without libFuzzer, so any
// compiler and sanitizer build can replay the seed corpus and the crash regressions:
//   dsq-fuzz-replay PATH...   (prints how many inputs ended in each outcome)
// Exit status 0 unless an input could not be read; a crash is the sanitizer's report.
#include <cstdio>
#include <dirent.h>
#include <fstream>
#include <iterator>
#include <string>
#include <sys/stat.h>
#include <vector>

#include "fuzz/fuzz_load.h"

namespace {

int counts[5] = {};

bool replay(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    std::fprintf(stderr, "cannot stat %s\n", path.c_str());
    return false;
  }
  if (S_ISDIR(st.st_mode)) {
    DIR* dir = opendir(path.c_str());
    if (!dir) return false;
    std::vector<std::string> names;
    while (dirent* e = readdir(dir))
      if (e->d_name[0] != '.') names.push_back(e->d_name);
    closedir(dir);
    bool ok = true;
    for (const auto& n : names) ok &= replay(path + "/" + n);
    return ok;
  }
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  ++counts[static_cast<int>(dsq::fuzz::fuzz_one(bytes.data(), bytes.size()))];
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  bool ok = true;
  for (int i = 1; i < argc; ++i) ok &= replay(argv[i]);
  std::printf("format_error %d unsupported %d limit %d too_big %d ran %d\n", counts[0], counts[1], counts[2],
              counts[3], counts[4]);
  return ok ? 0 : 1;
}
