; NPU program for rngd (8 core(s), 128x128 ws, 33554432 B scratchpad per core)
; 37 instructions; DRAM buffers:
;   buf 0: x @0x0 (7680 bytes, input)
;   buf 1: r @0x1e00 (7680 bytes, input)
;   buf 2: s @0x3c00 (7680 bytes, temp)
;   buf 3: g @0x5a00 (192 bytes, const)
;   buf 4: b @0x5ac0 (192 bytes, const)
;   buf 5: y @0x5b80 (7680 bytes, output)
;   input x: buf 0+0 f32[4, 10, 48] strides [480, 48, 1]
;   input r: buf 1+0 f32[4, 10, 48] strides [480, 48, 1]
;   output y: buf 5+0 f32[4, 10, 48] strides [480, 48, 1]
;   op 0: Add Add_s
;   op 1: LayerNormalization LayerNormalization_y
ld      c0 eb=4 buf=0 off=0x0 sram=0x0 n0=1 n1=1 n2=1 n3=480 s0=0 s1=0 s2=0 s3=1 p0=0 p1=0 p2=0 op=0
ld      c0 eb=4 buf=1 off=0x0 sram=0x780 n0=1 n1=1 n2=1 n3=480 s0=0 s1=0 s2=0 s3=1 p0=0 p1=0 p2=0 op=0 sig=ld>vx
vec     c0 fn=add dst=0xf00 src0=0x0 src1=0x780 src2=none src3=none n0=1 n1=1 n2=1 n3=480 bcast=0x0 dtypes=0x0 imm0=0.0 imm1=0.0 imm2=0.0 arg=0 op=0 wait=ld>vx sig=vx>st
st      c0 eb=4 buf=2 off=0x0 sram=0xf00 n0=1 n1=1 n2=1 n3=480 s0=0 s1=0 s2=0 s3=1 p0=0 p1=0 p2=0 op=0 wait=vx>st
ld      c1 eb=4 buf=0 off=0x780 sram=0x0 n0=1 n1=1 n2=1 n3=480 s0=0 s1=0 s2=0 s3=1 p0=0 p1=0 p2=0 op=0
ld      c1 eb=4 buf=1 off=0x780 sram=0x780 n0=1 n1=1 n2=1 n3=480 s0=0 s1=0 s2=0 s3=1 p0=0 p1=0 p2=0 op=0 sig=ld>vx
vec     c1 fn=add dst=0xf00 src0=0x0 src1=0x780 src2=none src3=none n0=1 n1=1 n2=1 n3=480 bcast=0x0 dtypes=0x0 imm0=0.0 imm1=0.0 imm2=0.0 arg=0 op=0 wait=ld>vx sig=vx>st
st      c1 eb=4 buf=2 off=0x780 sram=0xf00 n0=1 n1=1 n2=1 n3=480 s0=0 s1=0 s2=0 s3=1 p0=0 p1=0 p2=0 op=0 wait=vx>st
ld      c2 eb=4 buf=0 off=0xf00 sram=0x0 n0=1 n1=1 n2=1 n3=480 s0=0 s1=0 s2=0 s3=1 p0=0 p1=0 p2=0 op=0
ld      c2 eb=4 buf=1 off=0xf00 sram=0x780 n0=1 n1=1 n2=1 n3=480 s0=0 s1=0 s2=0 s3=1 p0=0 p1=0 p2=0 op=0 sig=ld>vx
vec     c2 fn=add dst=0xf00 src0=0x0 src1=0x780 src2=none src3=none n0=1 n1=1 n2=1 n3=480 bcast=0x0 dtypes=0x0 imm0=0.0 imm1=0.0 imm2=0.0 arg=0 op=0 wait=ld>vx sig=vx>st
st      c2 eb=4 buf=2 off=0xf00 sram=0xf00 n0=1 n1=1 n2=1 n3=480 s0=0 s1=0 s2=0 s3=1 p0=0 p1=0 p2=0 op=0 wait=vx>st
ld      c3 eb=4 buf=0 off=0x1680 sram=0x0 n0=1 n1=1 n2=1 n3=480 s0=0 s1=0 s2=0 s3=1 p0=0 p1=0 p2=0 op=0
ld      c3 eb=4 buf=1 off=0x1680 sram=0x780 n0=1 n1=1 n2=1 n3=480 s0=0 s1=0 s2=0 s3=1 p0=0 p1=0 p2=0 op=0 sig=ld>vx
vec     c3 fn=add dst=0xf00 src0=0x0 src1=0x780 src2=none src3=none n0=1 n1=1 n2=1 n3=480 bcast=0x0 dtypes=0x0 imm0=0.0 imm1=0.0 imm2=0.0 arg=0 op=0 wait=ld>vx sig=vx>st
st      c3 eb=4 buf=2 off=0x1680 sram=0xf00 n0=1 n1=1 n2=1 n3=480 s0=0 s1=0 s2=0 s3=1 p0=0 p1=0 p2=0 op=0 wait=vx>st
barrier c* op=1
ld      c0 eb=4 buf=2 off=0x0 sram=0x0 n0=1 n1=1 n2=10 n3=48 s0=0 s1=0 s2=48 s3=1 p0=0 p1=0 p2=48 op=1
ld      c0 eb=4 buf=3 off=0x0 sram=0x780 n0=1 n1=1 n2=1 n3=48 s0=0 s1=0 s2=0 s3=1 p0=0 p1=0 p2=0 op=1
ld      c0 eb=4 buf=4 off=0x0 sram=0x840 n0=1 n1=1 n2=1 n3=48 s0=0 s1=0 s2=0 s3=1 p0=0 p1=0 p2=0 op=1 sig=ld>vx
vec     c0 fn=layernorm dst=0x900 src0=0x0 src1=0x780 src2=0x840 src3=none n0=1 n1=1 n2=10 n3=48 bcast=0x804400 dtypes=0x0 imm0=9.999999747378752e-06 imm1=0.0 imm2=0.0 arg=0 op=1 wait=ld>vx sig=vx>st
st      c0 eb=4 buf=5 off=0x0 sram=0x900 n0=1 n1=1 n2=10 n3=48 s0=0 s1=0 s2=48 s3=1 p0=0 p1=0 p2=48 op=1 wait=vx>st
ld      c1 eb=4 buf=2 off=0x780 sram=0x0 n0=1 n1=1 n2=10 n3=48 s0=0 s1=0 s2=48 s3=1 p0=0 p1=0 p2=48 op=1
ld      c1 eb=4 buf=3 off=0x0 sram=0x780 n0=1 n1=1 n2=1 n3=48 s0=0 s1=0 s2=0 s3=1 p0=0 p1=0 p2=0 op=1
ld      c1 eb=4 buf=4 off=0x0 sram=0x840 n0=1 n1=1 n2=1 n3=48 s0=0 s1=0 s2=0 s3=1 p0=0 p1=0 p2=0 op=1 sig=ld>vx
vec     c1 fn=layernorm dst=0x900 src0=0x0 src1=0x780 src2=0x840 src3=none n0=1 n1=1 n2=10 n3=48 bcast=0x804400 dtypes=0x0 imm0=9.999999747378752e-06 imm1=0.0 imm2=0.0 arg=0 op=1 wait=ld>vx sig=vx>st
st      c1 eb=4 buf=5 off=0x780 sram=0x900 n0=1 n1=1 n2=10 n3=48 s0=0 s1=0 s2=48 s3=1 p0=0 p1=0 p2=48 op=1 wait=vx>st
ld      c2 eb=4 buf=2 off=0xf00 sram=0x0 n0=1 n1=1 n2=10 n3=48 s0=0 s1=0 s2=48 s3=1 p0=0 p1=0 p2=48 op=1
ld      c2 eb=4 buf=3 off=0x0 sram=0x780 n0=1 n1=1 n2=1 n3=48 s0=0 s1=0 s2=0 s3=1 p0=0 p1=0 p2=0 op=1
ld      c2 eb=4 buf=4 off=0x0 sram=0x840 n0=1 n1=1 n2=1 n3=48 s0=0 s1=0 s2=0 s3=1 p0=0 p1=0 p2=0 op=1 sig=ld>vx
vec     c2 fn=layernorm dst=0x900 src0=0x0 src1=0x780 src2=0x840 src3=none n0=1 n1=1 n2=10 n3=48 bcast=0x804400 dtypes=0x0 imm0=9.999999747378752e-06 imm1=0.0 imm2=0.0 arg=0 op=1 wait=ld>vx sig=vx>st
st      c2 eb=4 buf=5 off=0xf00 sram=0x900 n0=1 n1=1 n2=10 n3=48 s0=0 s1=0 s2=48 s3=1 p0=0 p1=0 p2=48 op=1 wait=vx>st
ld      c3 eb=4 buf=2 off=0x1680 sram=0x0 n0=1 n1=1 n2=10 n3=48 s0=0 s1=0 s2=48 s3=1 p0=0 p1=0 p2=48 op=1
ld      c3 eb=4 buf=3 off=0x0 sram=0x780 n0=1 n1=1 n2=1 n3=48 s0=0 s1=0 s2=0 s3=1 p0=0 p1=0 p2=0 op=1
ld      c3 eb=4 buf=4 off=0x0 sram=0x840 n0=1 n1=1 n2=1 n3=48 s0=0 s1=0 s2=0 s3=1 p0=0 p1=0 p2=0 op=1 sig=ld>vx
vec     c3 fn=layernorm dst=0x900 src0=0x0 src1=0x780 src2=0x840 src3=none n0=1 n1=1 n2=10 n3=48 bcast=0x804400 dtypes=0x0 imm0=9.999999747378752e-06 imm1=0.0 imm2=0.0 arg=0 op=1 wait=ld>vx sig=vx>st
st      c3 eb=4 buf=5 off=0x1680 sram=0x900 n0=1 n1=1 n2=10 n3=48 s0=0 s1=0 s2=48 s3=1 p0=0 p1=0 p2=48 op=1 wait=vx>st
