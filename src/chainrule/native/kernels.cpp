// chainrule.native's one library: the three kernels compiled together (the PyTorch headers are
// the slow part of a build: one translation unit parses them once). Python sees one submodule
// per kernel: kernels.nade, kernels.diagonal, kernels.row_lstm.
#include "common.h"
#include "diagonal.h"
#include "nade.h"
#include "row_lstm.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  bind_nade(m.def_submodule("nade", "NADE's binary loop"));
  bind_diagonal(m.def_submodule("diagonal", "the Diagonal BiLSTM's walk"));
  bind_row_lstm(m.def_submodule("row_lstm", "the Row LSTM's rows"));
}
