/**
 * The scalar reference of the LoRA product kernel (plugin/lora/kernel.ts): the same arithmetic in
 * the same order, one element at a time, in plain JavaScript doubles. The SIMD kernel must give
 * the same bytes. Also measured by bench/lora.ts (scalar against SIMD).
 */
import { f32BitsToF16, f32BitsToBf16, f16BitsToF32, bf16BitsToF32 } from '../../plugin/formats/dtype.js';
import type { KernelJob } from '../../plugin/lora/kernel.js';

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

function f32Bits(x: number): number {
  f32[0] = x;
  return u32[0] as number;
}

/** W[rowBegin..rowEnd) += scale * B @ A, the kernel's contract, scalar. */
export function referenceKernel(job: KernelJob): void {
  const { cols, r, scale } = job;
  const B = new Float32Array(job.b, job.bOffset, job.rowEnd * r);
  const A = new Float32Array(job.a, job.aOffset, r * cols);
  const total = job.rowEnd * cols;
  const dv = new DataView(job.w, job.wOffset, total * ([4, 2, 2, 8][job.dtype] as number));
  const e = new Float64Array(r);
  for (let i = job.rowBegin; i < job.rowEnd; i++) {
    for (let k = 0; k < r; k++) e[k] = scale * (B[i * r + k] as number);
    for (let j = 0; j < cols; j++) {
      const at = i * cols + j;
      let v: number;
      switch (job.dtype) {
        case 0: v = dv.getFloat32(at * 4, true); break;
        case 1: v = f16BitsToF32(dv.getUint16(at * 2, true)); break;
        case 2: v = bf16BitsToF32(dv.getUint16(at * 2, true)); break;
        case 3: v = dv.getFloat64(at * 8, true); break;
        default: throw new Error(`unknown dtype code ${job.dtype}`);
      }
      for (let k = 0; k < r; k++) v += (e[k] as number) * (A[k * cols + j] as number);
      switch (job.dtype) {
        case 0: dv.setUint32(at * 4, Number.isNaN(v) ? 0x7fc00000 : f32Bits(v), true); break;
        case 1: dv.setUint16(at * 2, Number.isNaN(v) ? 0x7e00 : f32BitsToF16(f32Bits(v)), true); break;
        case 2: dv.setUint16(at * 2, Number.isNaN(v) ? 0x7fc0 : f32BitsToBf16(f32Bits(v)), true); break;
        default:
          if (Number.isNaN(v)) dv.setBigUint64(at * 8, 0x7ff8000000000000n, true);
          else dv.setFloat64(at * 8, v, true);
      }
    }
  }
}
