// 64-byte aligned, owning buffer: weights packed at load and the activation arena. A
// view (AlignedBuffer::view) borrows someone else's memory instead and frees nothing: the
// stream-decode path points a tile's PackedWeights into per-run scratch that way.
#pragma once
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace dsq {

class AlignedBuffer {
 public:
  static constexpr size_t kAlignment = 64;
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t bytes) { resize(bytes); }
  ~AlignedBuffer() { release(); }
  static AlignedBuffer view(const void* p, size_t bytes) {
    AlignedBuffer b;
    b.data_ = const_cast<void*>(p);
    b.size_ = bytes;
    b.owned_ = false;
    return b;
  }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  AlignedBuffer(AlignedBuffer&& o) noexcept : data_(o.data_), size_(o.size_), owned_(o.owned_) {
    o.data_ = nullptr;
    o.size_ = 0;
    o.owned_ = true;
  }
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    std::swap(owned_, o.owned_);
    return *this;
  }
  // Contents are zeroed; throws std::bad_alloc when memory is short.
  void resize(size_t bytes) {
    release();
    data_ = nullptr;
    size_ = 0;
    owned_ = true;
    if (bytes == 0) return;
    const size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    data_ = std::aligned_alloc(kAlignment, rounded);
    if (!data_) throw std::bad_alloc();
    std::memset(data_, 0, rounded);
    size_ = bytes;
  }
  template <typename T>
  T* as() { return static_cast<T*>(data_); }
  template <typename T>
  const T* as() const { return static_cast<const T*>(data_); }
  void* data() { return data_; }
  const void* data() const { return data_; }
  size_t size() const { return size_; }
  // Bytes this buffer owns (0 for a view).
  size_t owned_bytes() const { return owned_ ? size_ : 0; }

 private:
  void release() {
    if (owned_) std::free(data_);
  }
  void* data_ = nullptr;
  size_t size_ = 0;
  bool owned_ = true;
};

}  // namespace dsq
