// Typed errors of the engine. The bindings map them to Python exceptions
// (FormatError -> deepsqueeze.FormatError, InputError -> ValueError).
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace dsq {

// A file that does not follow docs/FORMAT.md: names the section and the absolute
// file offset of the offending field.
class FormatError : public std::runtime_error {
 public:
  FormatError(std::string section, uint64_t offset, const std::string& what)
      : std::runtime_error(section + " at offset " + std::to_string(offset) + ": " + what),
        section_(std::move(section)),
        offset_(offset) {}
  const std::string& section() const { return section_; }
  uint64_t offset() const { return offset_; }

 private:
  std::string section_;
  uint64_t offset_;
};

// A caller mistake at run time: wrong number of inputs, shape, rank or dtype.
class InputError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// A valid file that this build cannot run (e.g. an op/encoding combination without a
// kernel) or a resource limit.
class UnsupportedError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A configured resource limit (LoadOptions::max_memory) that a file or a run's input
// shapes would exceed. Python: deepsqueeze.ResourceLimitError (a MemoryError).
class LimitError : public UnsupportedError {
 public:
  using UnsupportedError::UnsupportedError;
};

}  // namespace dsq
