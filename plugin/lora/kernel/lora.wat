;; The LoRA product kernel, WebAssembly text with SIMD128. `npm run build:kernel` assembles it
;; into wasm.ts beside it; ../kernel.ts stages the work into this module's memory and calls `merge`.
;;
;; Per element of W, in this order (e[k] = scale * B[i,k], all in IEEE double, round to nearest
;; even, no fused multiply-add):
;;   v = decode(W[i,j]);  for k in 0..r-1: v = v + e[k] * A[k,j];  W[i,j] = encode(v)
;; where encode rounds v once to float32 and from there to W's dtype (Float64 W stores v), and a
;; NaN is stored as the dtype's canonical quiet NaN. The scalar reference in
;; test/lora/kernel-reference.ts does the same arithmetic one element at a time; the results are
;; identical bytes.
;;
;; Speed: two rows of W and eight columns (2 x 4 float64x2 accumulators in registers) take each
;; rank step together: two broadcast loads of e, four loads of A, eight multiplies, eight adds.
;; Columns are walked in blocks (`bs` strips) so that the block of packed A stays in cache while
;; every row pair of the tile passes over it.
;;
;; Memory, laid out by the caller:
;;   ap: A as float64 in strips of 8 columns, ap[strip][k][0..7] (zero past the last column);
;;   w:  W rows in W's dtype, `cols` elements apart (cols is a multiple of 8: rows are padded);
;;   b:  B rows as float32, r apart;
;;   e:  scratch, r pairs of float64; acc: scratch, 2 x bs x 8 float64.
;; dtype codes: 0 Float32, 1 Float16, 2 BFloat16, 3 Float64.
(module
  (memory (export "memory") 1)

  ;; ---- decode n elements (a multiple of 8) at $src into float64 at $dst ------------------------
  (func $decode (param $dtype i32) (param $src i32) (param $dst i32) (param $n i32)
    (local $end i32) (local $x v128) (local $em v128) (local $f v128)
    (if (i32.eqz (local.get $n)) (then (return)))
    (local.set $end (i32.add (local.get $dst) (i32.shl (local.get $n) (i32.const 3))))
    (block $f64
      (block $bf16
        (block $f16
          (block $f32
            (br_table $f32 $f16 $bf16 $f64 (local.get $dtype)))
          ;; Float32: widen
          (loop $l
            (v128.store offset=0 (local.get $dst) (f64x2.promote_low_f32x4 (v128.load64_zero offset=0 (local.get $src))))
            (v128.store offset=16 (local.get $dst) (f64x2.promote_low_f32x4 (v128.load64_zero offset=8 (local.get $src))))
            (local.set $src (i32.add (local.get $src) (i32.const 16)))
            (local.set $dst (i32.add (local.get $dst) (i32.const 32)))
            (br_if $l (i32.lt_u (local.get $dst) (local.get $end))))
          (return))
        ;; Float16: exact, by integer operations (no table, no subnormal float operands)
        (loop $l
          (local.set $x (i32x4.extend_low_i16x8_u (v128.load64_zero (local.get $src))))
          (local.set $em (v128.and (local.get $x) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff)))
          ;; normal: move the exponent and mantissa into place, rebias 15 -> 127
          (local.set $f (i32x4.add (i32x4.shl (local.get $em) (i32.const 13))
                                   (v128.const i32x4 0x38000000 0x38000000 0x38000000 0x38000000)))
          ;; subnormal and zero: m * 2^-24
          (local.set $f (v128.bitselect
            (f32x4.mul (f32x4.convert_i32x4_s (local.get $em)) (v128.const f32x4 0x1p-24 0x1p-24 0x1p-24 0x1p-24))
            (local.get $f)
            (i32x4.lt_s (local.get $em) (v128.const i32x4 0x400 0x400 0x400 0x400))))
          ;; Inf and NaN
          (local.set $f (v128.bitselect
            (v128.or (i32x4.shl (local.get $em) (i32.const 13)) (v128.const i32x4 0x7f800000 0x7f800000 0x7f800000 0x7f800000))
            (local.get $f)
            (i32x4.ge_s (local.get $em) (v128.const i32x4 0x7c00 0x7c00 0x7c00 0x7c00))))
          ;; sign
          (local.set $f (v128.or (local.get $f)
            (i32x4.shl (v128.and (local.get $x) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000)) (i32.const 16))))
          (v128.store offset=0 (local.get $dst) (f64x2.promote_low_f32x4 (local.get $f)))
          (v128.store offset=16 (local.get $dst) (f64x2.promote_low_f32x4
            (i8x16.shuffle 8 9 10 11 12 13 14 15 8 9 10 11 12 13 14 15 (local.get $f) (local.get $f))))
          (local.set $src (i32.add (local.get $src) (i32.const 8)))
          (local.set $dst (i32.add (local.get $dst) (i32.const 32)))
          (br_if $l (i32.lt_u (local.get $dst) (local.get $end))))
        (return))
      ;; BFloat16: the upper half of a float32
      (loop $l
        (local.set $f (i32x4.shl (i32x4.extend_low_i16x8_u (v128.load64_zero (local.get $src))) (i32.const 16)))
        (v128.store offset=0 (local.get $dst) (f64x2.promote_low_f32x4 (local.get $f)))
        (v128.store offset=16 (local.get $dst) (f64x2.promote_low_f32x4
          (i8x16.shuffle 8 9 10 11 12 13 14 15 8 9 10 11 12 13 14 15 (local.get $f) (local.get $f))))
        (local.set $src (i32.add (local.get $src) (i32.const 8)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 32)))
        (br_if $l (i32.lt_u (local.get $dst) (local.get $end))))
      (return))
    ;; Float64
    (memory.copy (local.get $dst) (local.get $src) (i32.shl (local.get $n) (i32.const 3))))

  ;; ---- encode n float64 (a multiple of 8) at $src into W's dtype at $dst ----------------------
  (func $encode (param $dtype i32) (param $src i32) (param $dst i32) (param $n i32)
    (local $end i32) (local $x v128) (local $a v128) (local $r v128)
    (if (i32.eqz (local.get $n)) (then (return)))
    (local.set $end (i32.add (local.get $src) (i32.shl (local.get $n) (i32.const 3))))
    (if (i32.eq (local.get $dtype) (i32.const 3))
      (then
        ;; Float64: canonical NaN
        (loop $l
          (local.set $x (v128.load (local.get $src)))
          (v128.store (local.get $dst) (v128.bitselect
            (v128.const i64x2 0x7ff8000000000000 0x7ff8000000000000) (local.get $x) (f64x2.ne (local.get $x) (local.get $x))))
          (local.set $src (i32.add (local.get $src) (i32.const 16)))
          (local.set $dst (i32.add (local.get $dst) (i32.const 16)))
          (br_if $l (i32.lt_u (local.get $src) (local.get $end))))
        (return)))
    (block $bf16
      (block $f16
        (block $f32
          (br_table $f32 $f16 $bf16 (local.get $dtype)))
        ;; Float32: round once, canonical NaN
        (loop $l
          (local.set $x (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23
            (f32x4.demote_f64x2_zero (v128.load offset=0 (local.get $src)))
            (f32x4.demote_f64x2_zero (v128.load offset=16 (local.get $src)))))
          (v128.store (local.get $dst) (v128.bitselect
            (v128.const i32x4 0x7fc00000 0x7fc00000 0x7fc00000 0x7fc00000) (local.get $x) (f32x4.ne (local.get $x) (local.get $x))))
          (local.set $src (i32.add (local.get $src) (i32.const 32)))
          (local.set $dst (i32.add (local.get $dst) (i32.const 16)))
          (br_if $l (i32.lt_u (local.get $src) (local.get $end))))
        (return))
      ;; Float16: round to float32, then to nearest even half
      (loop $l
        (local.set $x (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23
          (f32x4.demote_f64x2_zero (v128.load offset=0 (local.get $src)))
          (f32x4.demote_f64x2_zero (v128.load offset=16 (local.get $src)))))
        (local.set $a (v128.and (local.get $x) (v128.const i32x4 0x7fffffff 0x7fffffff 0x7fffffff 0x7fffffff)))
        ;; normal range: rebias 127 -> 15, add 0xfff plus the lowest kept bit (ties to even), shift
        (local.set $r (i32x4.shr_u
          (i32x4.add
            (i32x4.add (local.get $a) (v128.const i32x4 0xc8000fff 0xc8000fff 0xc8000fff 0xc8000fff))
            (v128.and (i32x4.shr_u (local.get $a) (i32.const 13)) (v128.const i32x4 1 1 1 1)))
          (i32.const 13)))
        ;; below 2^-14: adding 0.5 rounds to a multiple of 2^-24 (ties to even): the subnormal bits
        (local.set $r (v128.bitselect
          (i32x4.sub (f32x4.add (local.get $a) (v128.const f32x4 0.5 0.5 0.5 0.5))
                     (v128.const i32x4 0x3f000000 0x3f000000 0x3f000000 0x3f000000))
          (local.get $r)
          (i32x4.lt_s (local.get $a) (v128.const i32x4 0x38800000 0x38800000 0x38800000 0x38800000))))
        ;; 65520 and above (Inf and NaN included) give 0x7c00 or more: Inf
        (local.set $r (i32x4.min_u (local.get $r) (v128.const i32x4 0x7c00 0x7c00 0x7c00 0x7c00)))
        (local.set $r (v128.or (local.get $r)
          (v128.and (i32x4.shr_u (local.get $x) (i32.const 16)) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000))))
        ;; NaN: canonical
        (local.set $r (v128.bitselect
          (v128.const i32x4 0x7e00 0x7e00 0x7e00 0x7e00)
          (local.get $r)
          (i32x4.gt_s (local.get $a) (v128.const i32x4 0x7f800000 0x7f800000 0x7f800000 0x7f800000))))
        (v128.store64_lane 0 (local.get $dst) (i16x8.narrow_i32x4_u (local.get $r) (local.get $r)))
        (local.set $src (i32.add (local.get $src) (i32.const 32)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 8)))
        (br_if $l (i32.lt_u (local.get $src) (local.get $end))))
      (return))
    ;; BFloat16: round to float32, then to nearest even; canonical NaN
    (loop $l
      (local.set $x (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23
        (f32x4.demote_f64x2_zero (v128.load offset=0 (local.get $src)))
        (f32x4.demote_f64x2_zero (v128.load offset=16 (local.get $src)))))
      (local.set $r (i32x4.shr_u
        (i32x4.add
          (i32x4.add (local.get $x) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff))
          (v128.and (i32x4.shr_u (local.get $x) (i32.const 16)) (v128.const i32x4 1 1 1 1)))
        (i32.const 16)))
      (local.set $r (v128.bitselect
        (v128.const i32x4 0x7fc0 0x7fc0 0x7fc0 0x7fc0)
        (local.get $r)
        (f32x4.ne (local.get $x) (local.get $x))))
      (v128.store64_lane 0 (local.get $dst) (i16x8.narrow_i32x4_u (local.get $r) (local.get $r)))
      (local.set $src (i32.add (local.get $src) (i32.const 32)))
      (local.set $dst (i32.add (local.get $dst) (i32.const 8)))
      (br_if $l (i32.lt_u (local.get $src) (local.get $end)))))

  ;; ---- the product -------------------------------------------------------------------------
  ;; Rows [0, rows) of the W tile at $w receive their update.
  (func (export "merge")
    (param $dtype i32) (param $w i32) (param $rows i32) (param $cols i32)
    (param $b i32) (param $r i32) (param $ap i32) (param $scale f64)
    (param $e i32) (param $acc i32) (param $bs i32)
    (local $es i32) (local $strips i32) (local $astride i32) (local $eend i32) (local $half i32)
    (local $sb i32) (local $se i32) (local $n i32) (local $i i32) (local $i1 i32)
    (local $row0 i32) (local $row1 i32) (local $bp0 i32) (local $bp1 i32)
    (local $pacc i32) (local $pend i32) (local $pa i32) (local $pe i32)
    (local $x0 v128) (local $x1 v128) (local $v v128)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)
    (local $b0 v128) (local $b1 v128) (local $b2 v128) (local $b3 v128)
    (local.set $es (select (i32.const 4)
      (select (i32.const 8) (i32.const 2) (i32.eq (local.get $dtype) (i32.const 3)))
      (i32.eqz (local.get $dtype))))
    (local.set $strips (i32.shr_u (local.get $cols) (i32.const 3)))
    (local.set $astride (i32.shl (local.get $r) (i32.const 6)))
    (local.set $eend (i32.add (local.get $e) (i32.shl (local.get $r) (i32.const 4))))
    ;; the second row's accumulators start this far after the first's
    (local.set $half (i32.shl (local.get $bs) (i32.const 6)))
    (local.set $sb (i32.const 0))
    (block $blocks_done
      (loop $blocks
        (br_if $blocks_done (i32.ge_u (local.get $sb) (local.get $strips)))
        (local.set $se (i32.add (local.get $sb) (local.get $bs)))
        (if (i32.gt_u (local.get $se) (local.get $strips)) (then (local.set $se (local.get $strips))))
        (local.set $n (i32.shl (i32.sub (local.get $se) (local.get $sb)) (i32.const 3)))
        (local.set $pend (i32.add (local.get $acc) (i32.shl (local.get $n) (i32.const 3))))
        (local.set $i (i32.const 0))
        (block $rows_done
          (loop $rows_loop
            (br_if $rows_done (i32.ge_u (local.get $i) (local.get $rows)))
            ;; a pair of rows; the last one of an odd count is paired with itself
            (local.set $i1 (select (i32.add (local.get $i) (i32.const 1)) (local.get $i)
              (i32.lt_u (i32.add (local.get $i) (i32.const 1)) (local.get $rows))))
            ;; e[k] = (scale * B[i,k], scale * B[i1,k])
            (local.set $bp0 (i32.add (local.get $b) (i32.shl (i32.mul (local.get $i) (local.get $r)) (i32.const 2))))
            (local.set $bp1 (i32.add (local.get $b) (i32.shl (i32.mul (local.get $i1) (local.get $r)) (i32.const 2))))
            (local.set $pe (local.get $e))
            (block $e_done
              (loop $e_loop
                (br_if $e_done (i32.ge_u (local.get $pe) (local.get $eend)))
                (f64.store offset=0 (local.get $pe) (f64.mul (local.get $scale) (f64.promote_f32 (f32.load (local.get $bp0)))))
                (f64.store offset=8 (local.get $pe) (f64.mul (local.get $scale) (f64.promote_f32 (f32.load (local.get $bp1)))))
                (local.set $bp0 (i32.add (local.get $bp0) (i32.const 4)))
                (local.set $bp1 (i32.add (local.get $bp1) (i32.const 4)))
                (local.set $pe (i32.add (local.get $pe) (i32.const 16)))
                (br $e_loop)))
            (local.set $row0 (i32.add (local.get $w) (i32.mul (i32.add (i32.mul (local.get $i) (local.get $cols))
              (i32.shl (local.get $sb) (i32.const 3))) (local.get $es))))
            (local.set $row1 (i32.add (local.get $w) (i32.mul (i32.add (i32.mul (local.get $i1) (local.get $cols))
              (i32.shl (local.get $sb) (i32.const 3))) (local.get $es))))
            (call $decode (local.get $dtype) (local.get $row0) (local.get $acc) (local.get $n))
            (call $decode (local.get $dtype) (local.get $row1) (i32.add (local.get $acc) (local.get $half)) (local.get $n))
            (if (i32.and (i32.ne (local.get $r) (i32.const 0)) (i32.ne (local.get $n) (i32.const 0)))
              (then
                (local.set $pacc (local.get $acc))
                (local.set $pa (i32.add (local.get $ap) (i32.mul (local.get $sb) (local.get $astride))))
                (loop $strip_loop
                  (local.set $a0 (v128.load offset=0 (local.get $pacc)))
                  (local.set $a1 (v128.load offset=16 (local.get $pacc)))
                  (local.set $a2 (v128.load offset=32 (local.get $pacc)))
                  (local.set $a3 (v128.load offset=48 (local.get $pacc)))
                  (local.set $b0 (v128.load offset=0 (i32.add (local.get $pacc) (local.get $half))))
                  (local.set $b1 (v128.load offset=16 (i32.add (local.get $pacc) (local.get $half))))
                  (local.set $b2 (v128.load offset=32 (i32.add (local.get $pacc) (local.get $half))))
                  (local.set $b3 (v128.load offset=48 (i32.add (local.get $pacc) (local.get $half))))
                  (local.set $pe (local.get $e))
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
                    (br_if $k_loop (i32.lt_u (local.get $pe) (local.get $eend))))
                  (v128.store offset=0 (local.get $pacc) (local.get $a0))
                  (v128.store offset=16 (local.get $pacc) (local.get $a1))
                  (v128.store offset=32 (local.get $pacc) (local.get $a2))
                  (v128.store offset=48 (local.get $pacc) (local.get $a3))
                  (v128.store offset=0 (i32.add (local.get $pacc) (local.get $half)) (local.get $b0))
                  (v128.store offset=16 (i32.add (local.get $pacc) (local.get $half)) (local.get $b1))
                  (v128.store offset=32 (i32.add (local.get $pacc) (local.get $half)) (local.get $b2))
                  (v128.store offset=48 (i32.add (local.get $pacc) (local.get $half)) (local.get $b3))
                  (local.set $pacc (i32.add (local.get $pacc) (i32.const 64)))
                  (br_if $strip_loop (i32.lt_u (local.get $pacc) (local.get $pend))))))
            (call $encode (local.get $dtype) (local.get $acc) (local.get $row0) (local.get $n))
            (if (i32.ne (local.get $i1) (local.get $i))
              (then (call $encode (local.get $dtype) (i32.add (local.get $acc) (local.get $half)) (local.get $row1) (local.get $n))))
            (local.set $i (i32.add (local.get $i) (i32.const 2)))
            (br $rows_loop)))
        (local.set $sb (local.get $se))
        (br $blocks)))))
