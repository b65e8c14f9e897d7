// rt::transpose (4x4 register blocks inside 32x32 cache blocks, element-wise edges) vs
// the definition, for shapes around every block edge and strides wider than the rows.
#include <cstdint>
#include <vector>

#include "check.h"
#include "ops/ops.h"

int main() {
  const size_t sizes[] = {1, 2, 3, 4, 5, 7, 8, 31, 32, 33, 36, 63, 64, 65, 100};
  for (size_t rows : sizes)
    for (size_t cols : sizes)
      for (size_t pad : {size_t(0), size_t(3)}) {
        const size_t ss = cols + pad, ds = rows + pad;
        std::vector<float> src(rows * ss), dst(cols * ds, -1.f);
        for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<float>(i) * 0.5f + 1.f;
        dsq::rt::transpose(src.data(), ss, dst.data(), ds, rows, cols);
        size_t bad = 0;
        for (size_t c = 0; c < cols; ++c) {
          for (size_t r = 0; r < rows; ++r) bad += dst[c * ds + r] != src[r * ss + c];
          for (size_t r = rows; r < ds; ++r) bad += dst[c * ds + r] != -1.f;  // padding untouched
        }
        DSQ_CHECK(bad == 0, "rows %zu cols %zu pad %zu: %zu wrong", rows, cols, pad, bad);
      }
  DSQ_TEST_MAIN_END();
}
