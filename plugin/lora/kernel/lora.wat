;; The LoRA product kernel, WebAssembly text with SIMD128. `npm run build:kernel` assembles it
;; into wasm.ts beside it; ../kernel.ts stages the work into this module's memory and calls `merge`.
;;
;; Per element of W, in this order (e[k] = scale * B[i,k], all in IEEE double, round to nearest
;; even, no fused multiply-add):
;;   v = decode(W[i,j]);  for k in 0..r-1: v = v + e[k] * A[k,j];  W[i,j] = encode(v)
;; where decode is exact and encode rounds v once to float32 and from there to W's dtype (Float64
;; W stores v); a NaN is stored as the dtype's canonical quiet NaN (positive, no payload). The
;; scalar reference in test/lora/kernel-reference.ts does the same arithmetic one element at a
;; time; the results are identical bytes.
;;
;; Speed: two rows of W and eight columns (2 x 4 float64x2 accumulators, in registers) are decoded,
;; take all r rank steps (per step: two broadcast loads of e, four loads of A, eight multiplies,
;; eight adds), and are encoded back. Columns are walked in blocks (`bs` strips of 8) so that the
;; block of packed A stays in cache while every row pair of the tile passes over it.
;;
;; Memory, laid out by the caller:
;;   ap: A as float64 in strips of 8 columns, ap[strip][k][0..7] (zero past the last column);
;;   w:  W rows in W's dtype, `cols` elements apart (cols is a multiple of 8: rows are padded);
;;   b:  B rows as float32, r apart;
;;   e:  scratch for ceil(rows / 2) x r pairs of float64.
;; dtype codes: 0 Float32, 1 Float16, 2 BFloat16, 3 Float64.
(module
  (memory (export "memory") 1)

  (func (export "merge")
    (param $dtype i32) (param $w i32) (param $rows i32) (param $cols i32)
    (param $b i32) (param $r i32) (param $ap i32) (param $scale f64) (param $e i32) (param $bs i32)
    (local $es i32) (local $strips i32) (local $astride i32) (local $estride i32)
    (local $sb i32) (local $se i32) (local $i i32) (local $i1 i32) (local $s i32) (local $t i32)
    (local $p0 i32) (local $p1 i32) (local $q i32) (local $bp0 i32) (local $bp1 i32)
    (local $pa i32) (local $pe i32) (local $e0 i32) (local $eend i32)
    (local $h v128) (local $m v128) (local $v v128) (local $x v128) (local $y v128)
    (local $x0 v128) (local $x1 v128)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)
    (local $b0 v128) (local $b1 v128) (local $b2 v128) (local $b3 v128)
    (local.set $es (select (i32.const 4)
      (select (i32.const 8) (i32.const 2) (i32.eq (local.get $dtype) (i32.const 3)))
      (i32.eqz (local.get $dtype))))
    (local.set $strips (i32.shr_u (local.get $cols) (i32.const 3)))
    (local.set $astride (i32.shl (local.get $r) (i32.const 6)))
    (local.set $estride (i32.shl (local.get $r) (i32.const 4)))

    ;; e for every row pair: (scale * B[i,k], scale * B[i1,k]) for k in 0..r-1; the last row of an
    ;; odd count is paired with itself (both halves then compute and store the same values)
    (local.set $pe (local.get $e))
    (local.set $i (i32.const 0))
    (block $e_done
      (loop $e_rows
        (br_if $e_done (i32.ge_u (local.get $i) (local.get $rows)))
        (local.set $i1 (select (i32.add (local.get $i) (i32.const 1)) (local.get $i)
          (i32.lt_u (i32.add (local.get $i) (i32.const 1)) (local.get $rows))))
        (local.set $bp0 (i32.add (local.get $b) (i32.shl (i32.mul (local.get $i) (local.get $r)) (i32.const 2))))
        (local.set $bp1 (i32.add (local.get $b) (i32.shl (i32.mul (local.get $i1) (local.get $r)) (i32.const 2))))
        (local.set $eend (i32.add (local.get $pe) (local.get $estride)))
        (block $k_done
          (loop $k_loop
            (br_if $k_done (i32.ge_u (local.get $pe) (local.get $eend)))
            (f64.store offset=0 (local.get $pe) (f64.mul (local.get $scale) (f64.promote_f32 (f32.load (local.get $bp0)))))
            (f64.store offset=8 (local.get $pe) (f64.mul (local.get $scale) (f64.promote_f32 (f32.load (local.get $bp1)))))
            (local.set $bp0 (i32.add (local.get $bp0) (i32.const 4)))
            (local.set $bp1 (i32.add (local.get $bp1) (i32.const 4)))
            (local.set $pe (i32.add (local.get $pe) (i32.const 16)))
            (br $k_loop)))
        (local.set $i (i32.add (local.get $i) (i32.const 2)))
        (br $e_rows)))

    ;; column blocks; in each, every row pair; in each, every strip of 8 columns
    (local.set $sb (i32.const 0))
    (block $blocks_done
      (loop $blocks
        (br_if $blocks_done (i32.ge_u (local.get $sb) (local.get $strips)))
        (local.set $se (i32.add (local.get $sb) (local.get $bs)))
        (if (i32.gt_u (local.get $se) (local.get $strips)) (then (local.set $se (local.get $strips))))
        (local.set $i (i32.const 0))
        (local.set $e0 (local.get $e))
        (block $rows_done
          (loop $rows_loop
            (br_if $rows_done (i32.ge_u (local.get $i) (local.get $rows)))
            (local.set $i1 (select (i32.add (local.get $i) (i32.const 1)) (local.get $i)
              (i32.lt_u (i32.add (local.get $i) (i32.const 1)) (local.get $rows))))
            (local.set $p0 (i32.add (local.get $w) (i32.mul (i32.add (i32.mul (local.get $i) (local.get $cols))
              (i32.shl (local.get $sb) (i32.const 3))) (local.get $es))))
            (local.set $p1 (i32.add (local.get $w) (i32.mul (i32.add (i32.mul (local.get $i1) (local.get $cols))
              (i32.shl (local.get $sb) (i32.const 3))) (local.get $es))))
            (local.set $eend (i32.add (local.get $e0) (local.get $estride)))
            (local.set $pa (i32.add (local.get $ap) (i32.mul (local.get $sb) (local.get $astride))))
            (local.set $s (local.get $sb))
            (loop $strips_loop
              ;; ---- decode 8 elements of row 1 (into b0..b3), then of row 0 (into a0..a3)
              (local.set $t (i32.const 2))
              (local.set $q (local.get $p1))
              (loop $dec_rows
                (block $decoded
                  (block $widen
                    (block $d_f64
                      (block $d_bf16
                        (block $d_f16
                          (block $d_f32
                            (br_table $d_f32 $d_f16 $d_bf16 $d_f64 (local.get $dtype)))
                          ;; Float32
                          (local.set $a0 (f64x2.promote_low_f32x4 (v128.load64_zero offset=0 (local.get $q))))
                          (local.set $a1 (f64x2.promote_low_f32x4 (v128.load64_zero offset=8 (local.get $q))))
                          (local.set $a2 (f64x2.promote_low_f32x4 (v128.load64_zero offset=16 (local.get $q))))
                          (local.set $a3 (f64x2.promote_low_f32x4 (v128.load64_zero offset=24 (local.get $q))))
                          (br $decoded))
                        ;; Float16, exactly: the magnitude bits moved into a float32 and scaled by
                        ;; 2^112 give normals and subnormals; the upper half of each word gets the
                        ;; sign and, for Inf/NaN (exponent 31), the float32 exponent 255
                        (local.set $h (v128.load (local.get $q)))
                        (local.set $m (v128.and (local.get $h) (v128.const i16x8 0x7fff 0x7fff 0x7fff 0x7fff 0x7fff 0x7fff 0x7fff 0x7fff)))
                        (local.set $v (v128.or
                          (v128.and (local.get $h) (v128.const i16x8 0x8000 0x8000 0x8000 0x8000 0x8000 0x8000 0x8000 0x8000))
                          (v128.and (i16x8.gt_s (local.get $m) (v128.const i16x8 0x7bff 0x7bff 0x7bff 0x7bff 0x7bff 0x7bff 0x7bff 0x7bff)) (v128.const i16x8 0x7f80 0x7f80 0x7f80 0x7f80 0x7f80 0x7f80 0x7f80 0x7f80))))
                        (local.set $x (v128.or
                          (f32x4.mul (i32x4.shl (i32x4.extend_low_i16x8_u (local.get $m)) (i32.const 13)) (v128.const f32x4 0x1p112 0x1p112 0x1p112 0x1p112))
                          (i8x16.shuffle 0 1 16 17 2 3 18 19 4 5 20 21 6 7 22 23 (v128.const i64x2 0 0) (local.get $v))))
                        (local.set $y (v128.or
                          (f32x4.mul (i32x4.shl (i32x4.extend_high_i16x8_u (local.get $m)) (i32.const 13)) (v128.const f32x4 0x1p112 0x1p112 0x1p112 0x1p112))
                          (i8x16.shuffle 8 9 24 25 10 11 26 27 12 13 28 29 14 15 30 31 (v128.const i64x2 0 0) (local.get $v))))
                        (br $widen))
                      ;; BFloat16: the upper half of a float32
                      (local.set $h (v128.load (local.get $q)))
                      (local.set $x (i8x16.shuffle 0 1 16 17 2 3 18 19 4 5 20 21 6 7 22 23 (v128.const i64x2 0 0) (local.get $h)))
                      (local.set $y (i8x16.shuffle 8 9 24 25 10 11 26 27 12 13 28 29 14 15 30 31 (v128.const i64x2 0 0) (local.get $h)))
                      (br $widen))
                    ;; Float64
                    (local.set $a0 (v128.load offset=0 (local.get $q)))
                    (local.set $a1 (v128.load offset=16 (local.get $q)))
                    (local.set $a2 (v128.load offset=32 (local.get $q)))
                    (local.set $a3 (v128.load offset=48 (local.get $q)))
                    (br $decoded))
                  ;; 16-bit dtypes: four float32 in x, four in y
                  (local.set $a0 (f64x2.promote_low_f32x4 (local.get $x)))
                  (local.set $a1 (f64x2.promote_low_f32x4 (i8x16.shuffle 8 9 10 11 12 13 14 15 8 9 10 11 12 13 14 15 (local.get $x) (local.get $x))))
                  (local.set $a2 (f64x2.promote_low_f32x4 (local.get $y)))
                  (local.set $a3 (f64x2.promote_low_f32x4 (i8x16.shuffle 8 9 10 11 12 13 14 15 8 9 10 11 12 13 14 15 (local.get $y) (local.get $y)))))
                (local.set $t (i32.sub (local.get $t) (i32.const 1)))
                (if (local.get $t)
                  (then
                    (local.set $b0 (local.get $a0))
                    (local.set $b1 (local.get $a1))
                    (local.set $b2 (local.get $a2))
                    (local.set $b3 (local.get $a3))
                    (local.set $q (local.get $p0))
                    (br $dec_rows))))

              ;; ---- the r rank steps, in order of k
              (local.set $pe (local.get $e0))
              (if (local.get $r)
                (then
                  (loop $k_loop
                    (local.set $x0 (v128.load64_splat offset=0 (local.get $pe)))
                    (local.set $x1 (v128.load64_splat offset=8 (local.get $pe)))
                    (local.set $v (v128.load offset=0 (local.get $pa)))
                    (local.set $a0 (f64x2.add (local.get $a0) (f64x2.mul (local.get $x0) (local.get $v))))
                    (local.set $b0 (f64x2.add (local.get $b0) (f64x2.mul (local.get $x1) (local.get $v))))
                    (local.set $v (v128.load offset=16 (local.get $pa)))
                    (local.set $a1 (f64x2.add (local.get $a1) (f64x2.mul (local.get $x0) (local.get $v))))
                    (local.set $b1 (f64x2.add (local.get $b1) (f64x2.mul (local.get $x1) (local.get $v))))
                    (local.set $v (v128.load offset=32 (local.get $pa)))
                    (local.set $a2 (f64x2.add (local.get $a2) (f64x2.mul (local.get $x0) (local.get $v))))
                    (local.set $b2 (f64x2.add (local.get $b2) (f64x2.mul (local.get $x1) (local.get $v))))
                    (local.set $v (v128.load offset=48 (local.get $pa)))
                    (local.set $a3 (f64x2.add (local.get $a3) (f64x2.mul (local.get $x0) (local.get $v))))
                    (local.set $b3 (f64x2.add (local.get $b3) (f64x2.mul (local.get $x1) (local.get $v))))
                    (local.set $pa (i32.add (local.get $pa) (i32.const 64)))
                    (local.set $pe (i32.add (local.get $pe) (i32.const 16)))
                    (br_if $k_loop (i32.lt_u (local.get $pe) (local.get $eend))))))

              ;; ---- encode row 0 (a0..a3), then row 1 (b0..b3 moved into a0..a3)
              (local.set $t (i32.const 2))
              (local.set $q (local.get $p0))
              (loop $enc_rows
                (block $encoded
                  (block $n_f64
                    (br_if $n_f64 (i32.eq (local.get $dtype) (i32.const 3)))
                    ;; round once to float32: four values in x, four in y
                    (local.set $x (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (f32x4.demote_f64x2_zero (local.get $a0)) (f32x4.demote_f64x2_zero (local.get $a1))))
                    (local.set $y (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (f32x4.demote_f64x2_zero (local.get $a2)) (f32x4.demote_f64x2_zero (local.get $a3))))
                    (block $n_bf16
                      (block $n_f16
                        (block $n_f32
                          (br_table $n_f32 $n_f16 $n_bf16 (local.get $dtype)))
                        ;; Float32: canonical NaN
                        (v128.store offset=0 (local.get $q) (v128.bitselect (v128.const i32x4 0x7fc00000 0x7fc00000 0x7fc00000 0x7fc00000) (local.get $x) (f32x4.ne (local.get $x) (local.get $x))))
                        (v128.store offset=16 (local.get $q) (v128.bitselect (v128.const i32x4 0x7fc00000 0x7fc00000 0x7fc00000 0x7fc00000) (local.get $y) (f32x4.ne (local.get $y) (local.get $y))))
                        (br $encoded))
                      ;; Float16, to nearest even. Per word, with m = |x| bits: normal range:
                      ;; rebias 127 -> 15, add 0xfff plus the lowest kept bit, shift; below 2^-14:
                      ;; adding 0.5 rounds to a multiple of 2^-24 = the subnormal bits; 65520 and
                      ;; above (Inf, NaN) clamp to 0x7c00. Then in 16-bit lanes: NaN -> 0x7e00,
                      ;; the sign for the rest.
                      (local.set $m (v128.and (local.get $x) (v128.const i32x4 0x7fffffff 0x7fffffff 0x7fffffff 0x7fffffff)))
                      (local.set $x0 (i32x4.min_u
                        (v128.bitselect
                          (i32x4.sub (f32x4.add (local.get $m) (v128.const f32x4 0.5 0.5 0.5 0.5)) (v128.const i32x4 0x3f000000 0x3f000000 0x3f000000 0x3f000000))
                          (i32x4.shr_u
                            (i32x4.add (i32x4.add (local.get $m) (v128.const i32x4 0xc8000fff 0xc8000fff 0xc8000fff 0xc8000fff))
                                       (v128.and (i32x4.shr_u (local.get $m) (i32.const 13)) (v128.const i32x4 1 1 1 1)))
                            (i32.const 13))
                          (i32x4.lt_s (local.get $m) (v128.const i32x4 0x38800000 0x38800000 0x38800000 0x38800000)))
                        (v128.const i32x4 0x7c00 0x7c00 0x7c00 0x7c00)))
                      (local.set $m (v128.and (local.get $y) (v128.const i32x4 0x7fffffff 0x7fffffff 0x7fffffff 0x7fffffff)))
                      (local.set $x1 (i32x4.min_u
                        (v128.bitselect
                          (i32x4.sub (f32x4.add (local.get $m) (v128.const f32x4 0.5 0.5 0.5 0.5)) (v128.const i32x4 0x3f000000 0x3f000000 0x3f000000 0x3f000000))
                          (i32x4.shr_u
                            (i32x4.add (i32x4.add (local.get $m) (v128.const i32x4 0xc8000fff 0xc8000fff 0xc8000fff 0xc8000fff))
                                       (v128.and (i32x4.shr_u (local.get $m) (i32.const 13)) (v128.const i32x4 1 1 1 1)))
                            (i32.const 13))
                          (i32x4.lt_s (local.get $m) (v128.const i32x4 0x38800000 0x38800000 0x38800000 0x38800000)))
                        (v128.const i32x4 0x7c00 0x7c00 0x7c00 0x7c00)))
                      (local.set $v (i16x8.narrow_i32x4_s (f32x4.ne (local.get $x) (local.get $x)) (f32x4.ne (local.get $y) (local.get $y))))
                      (v128.store (local.get $q) (v128.or
                        (v128.or (i16x8.narrow_i32x4_u (local.get $x0) (local.get $x1)) (v128.and (local.get $v) (v128.const i16x8 0x0200 0x0200 0x0200 0x0200 0x0200 0x0200 0x0200 0x0200)))
                        (v128.andnot
                          (v128.and (i16x8.narrow_i32x4_s (i32x4.shr_s (local.get $x) (i32.const 16)) (i32x4.shr_s (local.get $y) (i32.const 16)))
                                    (v128.const i16x8 0x8000 0x8000 0x8000 0x8000 0x8000 0x8000 0x8000 0x8000))
                          (local.get $v))))
                      (br $encoded))
                    ;; BFloat16, to nearest even; canonical NaN
                    (local.set $x0 (i32x4.shr_u
                      (i32x4.add (i32x4.add (local.get $x) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff))
                                 (v128.and (i32x4.shr_u (local.get $x) (i32.const 16)) (v128.const i32x4 1 1 1 1)))
                      (i32.const 16)))
                    (local.set $x1 (i32x4.shr_u
                      (i32x4.add (i32x4.add (local.get $y) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff))
                                 (v128.and (i32x4.shr_u (local.get $y) (i32.const 16)) (v128.const i32x4 1 1 1 1)))
                      (i32.const 16)))
                    (v128.store (local.get $q) (v128.bitselect
                      (v128.const i16x8 0x7fc0 0x7fc0 0x7fc0 0x7fc0 0x7fc0 0x7fc0 0x7fc0 0x7fc0)
                      (i16x8.narrow_i32x4_u (local.get $x0) (local.get $x1))
                      (i16x8.narrow_i32x4_s (f32x4.ne (local.get $x) (local.get $x)) (f32x4.ne (local.get $y) (local.get $y)))))
                    (br $encoded))
                  ;; Float64: canonical NaN
                  (v128.store offset=0 (local.get $q) (v128.bitselect (v128.const i64x2 0x7ff8000000000000 0x7ff8000000000000) (local.get $a0) (f64x2.ne (local.get $a0) (local.get $a0))))
                  (v128.store offset=16 (local.get $q) (v128.bitselect (v128.const i64x2 0x7ff8000000000000 0x7ff8000000000000) (local.get $a1) (f64x2.ne (local.get $a1) (local.get $a1))))
                  (v128.store offset=32 (local.get $q) (v128.bitselect (v128.const i64x2 0x7ff8000000000000 0x7ff8000000000000) (local.get $a2) (f64x2.ne (local.get $a2) (local.get $a2))))
                  (v128.store offset=48 (local.get $q) (v128.bitselect (v128.const i64x2 0x7ff8000000000000 0x7ff8000000000000) (local.get $a3) (f64x2.ne (local.get $a3) (local.get $a3)))))
                (local.set $t (i32.sub (local.get $t) (i32.const 1)))
                (if (local.get $t)
                  (then
                    (local.set $a0 (local.get $b0))
                    (local.set $a1 (local.get $b1))
                    (local.set $a2 (local.get $b2))
                    (local.set $a3 (local.get $b3))
                    (local.set $q (local.get $p1))
                    (br $enc_rows))))

              (local.set $p0 (i32.add (local.get $p0) (i32.shl (local.get $es) (i32.const 3))))
              (local.set $p1 (i32.add (local.get $p1) (i32.shl (local.get $es) (i32.const 3))))
              (local.set $s (i32.add (local.get $s) (i32.const 1)))
              (br_if $strips_loop (i32.lt_u (local.get $s) (local.get $se))))
            (local.set $e0 (local.get $eend))
            (local.set $i (i32.add (local.get $i) (i32.const 2)))
            (br $rows_loop)))
        (local.set $sb (local.get $se))
        (br $blocks)))))
