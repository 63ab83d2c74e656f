from vlm.utils.machine import describe_machine
from vlm.utils.machine import machine
from vlm.utils.machine import matmul_peak_gflops
from vlm.utils.machine import vector_extensions


def test_vector_extensions_name_the_widest_simd():
    assert vector_extensions({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}) == (
        "AVX-512 + BF16 + AMX")
    assert vector_extensions({"avx2", "avx512f"}) == "AVX-512"
    assert vector_extensions({"avx", "avx2", "fma"}) == "AVX2 only"
    assert vector_extensions({"sse4_2"}) == "no AVX2"
    assert vector_extensions() == machine()["vector_extensions"]


def test_the_machine_line_has_cores_extensions_and_a_measured_peak():
    peak = matmul_peak_gflops(size=256, repeats=2)
    assert peak > 0.5  # any CPU of this decade does a 256-matmul faster than 0.5 GFLOP/s
    line = describe_machine(peak_gflops=123.4)
    info = machine()
    assert line == (f"{info['cpu']}, {info['cores']} cores, {info['vector_extensions']}; "
                    "float32 matmul peak 123 GFLOP/s")
