; NPU program for atom (8 core(s), 64x128 ws, 4194304 B scratchpad per core)
; 98 instructions; DRAM buffers:
;   buf 0: a @0x0 (28000 bytes, input)
;   buf 1: w @0x6d80 (56000 bytes, const)
;   buf 2: s @0x14840 (80000 bytes, temp)
;   buf 3: y @0x280c0 (80000 bytes, output)
;   input a: buf 0+0 f32[100, 70] strides [70, 1]
;   output y: buf 3+0 f32[100, 200] strides [200, 1]
;   op 0: MatMul MatMul_s
;   op 1: Softmax Softmax_y
ld      c0 eb=4 buf=0 off=0x0 sram=0x0 n0=1 n1=1 n2=100 n3=64 s0=0 s1=0 s2=70 s3=1 p0=0 p1=0 p2=64 op=0
ld      c0 eb=4 buf=1 off=0x0 sram=0xc800 n0=1 n1=1 n2=64 n3=32 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=32 op=0 sig=ld>mx
mm      c0 dt=f32 accum=0 win=0 a=0x0 b=0xc800 acc=0x10800 m=100 n=32 k=64 a_sm=64 a_sk=1 b_sk=32 b_sn=1 acc_sm=32 acc_sn=1 g=1 a_sg=0 b_sg=0 acc_sg=0 op=0 wait=ld>mx
ld      c0 eb=4 buf=0 off=0x100 sram=0x6400 n0=1 n1=1 n2=100 n3=6 s0=0 s1=0 s2=70 s3=1 p0=0 p1=0 p2=6 op=0
ld      c0 eb=4 buf=1 off=0xc800 sram=0xe800 n0=1 n1=1 n2=6 n3=32 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=32 op=0 sig=ld>mx
mm      c0 dt=f32 accum=1 win=0 a=0x6400 b=0xe800 acc=0x10800 m=100 n=32 k=6 a_sm=6 a_sk=1 b_sk=32 b_sn=1 acc_sm=32 acc_sn=1 g=1 a_sg=0 b_sg=0 acc_sg=0 op=0 wait=ld>mx sig=mx>st
st      c0 eb=4 buf=2 off=0x0 sram=0x10800 n0=1 n1=1 n2=100 n3=32 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=32 op=0 wait=mx>st
ld      c1 eb=4 buf=0 off=0x0 sram=0x0 n0=1 n1=1 n2=100 n3=64 s0=0 s1=0 s2=70 s3=1 p0=0 p1=0 p2=64 op=0
ld      c1 eb=4 buf=1 off=0x80 sram=0xc800 n0=1 n1=1 n2=64 n3=32 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=32 op=0 sig=ld>mx
mm      c1 dt=f32 accum=0 win=0 a=0x0 b=0xc800 acc=0x10800 m=100 n=32 k=64 a_sm=64 a_sk=1 b_sk=32 b_sn=1 acc_sm=32 acc_sn=1 g=1 a_sg=0 b_sg=0 acc_sg=0 op=0 wait=ld>mx
ld      c1 eb=4 buf=0 off=0x100 sram=0x6400 n0=1 n1=1 n2=100 n3=6 s0=0 s1=0 s2=70 s3=1 p0=0 p1=0 p2=6 op=0
ld      c1 eb=4 buf=1 off=0xc880 sram=0xe800 n0=1 n1=1 n2=6 n3=32 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=32 op=0 sig=ld>mx
mm      c1 dt=f32 accum=1 win=0 a=0x6400 b=0xe800 acc=0x10800 m=100 n=32 k=6 a_sm=6 a_sk=1 b_sk=32 b_sn=1 acc_sm=32 acc_sn=1 g=1 a_sg=0 b_sg=0 acc_sg=0 op=0 wait=ld>mx sig=mx>st
st      c1 eb=4 buf=2 off=0x80 sram=0x10800 n0=1 n1=1 n2=100 n3=32 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=32 op=0 wait=mx>st
ld      c2 eb=4 buf=0 off=0x0 sram=0x0 n0=1 n1=1 n2=100 n3=64 s0=0 s1=0 s2=70 s3=1 p0=0 p1=0 p2=64 op=0
ld      c2 eb=4 buf=1 off=0x100 sram=0xc800 n0=1 n1=1 n2=64 n3=32 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=32 op=0 sig=ld>mx
mm      c2 dt=f32 accum=0 win=0 a=0x0 b=0xc800 acc=0x10800 m=100 n=32 k=64 a_sm=64 a_sk=1 b_sk=32 b_sn=1 acc_sm=32 acc_sn=1 g=1 a_sg=0 b_sg=0 acc_sg=0 op=0 wait=ld>mx
ld      c2 eb=4 buf=0 off=0x100 sram=0x6400 n0=1 n1=1 n2=100 n3=6 s0=0 s1=0 s2=70 s3=1 p0=0 p1=0 p2=6 op=0
ld      c2 eb=4 buf=1 off=0xc900 sram=0xe800 n0=1 n1=1 n2=6 n3=32 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=32 op=0 sig=ld>mx
mm      c2 dt=f32 accum=1 win=0 a=0x6400 b=0xe800 acc=0x10800 m=100 n=32 k=6 a_sm=6 a_sk=1 b_sk=32 b_sn=1 acc_sm=32 acc_sn=1 g=1 a_sg=0 b_sg=0 acc_sg=0 op=0 wait=ld>mx sig=mx>st
st      c2 eb=4 buf=2 off=0x100 sram=0x10800 n0=1 n1=1 n2=100 n3=32 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=32 op=0 wait=mx>st
ld      c3 eb=4 buf=0 off=0x0 sram=0x0 n0=1 n1=1 n2=100 n3=64 s0=0 s1=0 s2=70 s3=1 p0=0 p1=0 p2=64 op=0
ld      c3 eb=4 buf=1 off=0x180 sram=0xc800 n0=1 n1=1 n2=64 n3=32 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=32 op=0 sig=ld>mx
mm      c3 dt=f32 accum=0 win=0 a=0x0 b=0xc800 acc=0x10800 m=100 n=32 k=64 a_sm=64 a_sk=1 b_sk=32 b_sn=1 acc_sm=32 acc_sn=1 g=1 a_sg=0 b_sg=0 acc_sg=0 op=0 wait=ld>mx
ld      c3 eb=4 buf=0 off=0x100 sram=0x6400 n0=1 n1=1 n2=100 n3=6 s0=0 s1=0 s2=70 s3=1 p0=0 p1=0 p2=6 op=0
ld      c3 eb=4 buf=1 off=0xc980 sram=0xe800 n0=1 n1=1 n2=6 n3=32 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=32 op=0 sig=ld>mx
mm      c3 dt=f32 accum=1 win=0 a=0x6400 b=0xe800 acc=0x10800 m=100 n=32 k=6 a_sm=6 a_sk=1 b_sk=32 b_sn=1 acc_sm=32 acc_sn=1 g=1 a_sg=0 b_sg=0 acc_sg=0 op=0 wait=ld>mx sig=mx>st
st      c3 eb=4 buf=2 off=0x180 sram=0x10800 n0=1 n1=1 n2=100 n3=32 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=32 op=0 wait=mx>st
ld      c4 eb=4 buf=0 off=0x0 sram=0x0 n0=1 n1=1 n2=100 n3=64 s0=0 s1=0 s2=70 s3=1 p0=0 p1=0 p2=64 op=0
ld      c4 eb=4 buf=1 off=0x200 sram=0xc800 n0=1 n1=1 n2=64 n3=32 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=32 op=0 sig=ld>mx
mm      c4 dt=f32 accum=0 win=0 a=0x0 b=0xc800 acc=0x10800 m=100 n=32 k=64 a_sm=64 a_sk=1 b_sk=32 b_sn=1 acc_sm=32 acc_sn=1 g=1 a_sg=0 b_sg=0 acc_sg=0 op=0 wait=ld>mx
ld      c4 eb=4 buf=0 off=0x100 sram=0x6400 n0=1 n1=1 n2=100 n3=6 s0=0 s1=0 s2=70 s3=1 p0=0 p1=0 p2=6 op=0
ld      c4 eb=4 buf=1 off=0xca00 sram=0xe800 n0=1 n1=1 n2=6 n3=32 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=32 op=0 sig=ld>mx
mm      c4 dt=f32 accum=1 win=0 a=0x6400 b=0xe800 acc=0x10800 m=100 n=32 k=6 a_sm=6 a_sk=1 b_sk=32 b_sn=1 acc_sm=32 acc_sn=1 g=1 a_sg=0 b_sg=0 acc_sg=0 op=0 wait=ld>mx sig=mx>st
st      c4 eb=4 buf=2 off=0x200 sram=0x10800 n0=1 n1=1 n2=100 n3=32 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=32 op=0 wait=mx>st
ld      c5 eb=4 buf=0 off=0x0 sram=0x0 n0=1 n1=1 n2=100 n3=64 s0=0 s1=0 s2=70 s3=1 p0=0 p1=0 p2=64 op=0
ld      c5 eb=4 buf=1 off=0x280 sram=0xc800 n0=1 n1=1 n2=64 n3=32 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=32 op=0 sig=ld>mx
mm      c5 dt=f32 accum=0 win=0 a=0x0 b=0xc800 acc=0x10800 m=100 n=32 k=64 a_sm=64 a_sk=1 b_sk=32 b_sn=1 acc_sm=32 acc_sn=1 g=1 a_sg=0 b_sg=0 acc_sg=0 op=0 wait=ld>mx
ld      c5 eb=4 buf=0 off=0x100 sram=0x6400 n0=1 n1=1 n2=100 n3=6 s0=0 s1=0 s2=70 s3=1 p0=0 p1=0 p2=6 op=0
ld      c5 eb=4 buf=1 off=0xca80 sram=0xe800 n0=1 n1=1 n2=6 n3=32 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=32 op=0 sig=ld>mx
mm      c5 dt=f32 accum=1 win=0 a=0x6400 b=0xe800 acc=0x10800 m=100 n=32 k=6 a_sm=6 a_sk=1 b_sk=32 b_sn=1 acc_sm=32 acc_sn=1 g=1 a_sg=0 b_sg=0 acc_sg=0 op=0 wait=ld>mx sig=mx>st
st      c5 eb=4 buf=2 off=0x280 sram=0x10800 n0=1 n1=1 n2=100 n3=32 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=32 op=0 wait=mx>st
ld      c6 eb=4 buf=0 off=0x0 sram=0x0 n0=1 n1=1 n2=100 n3=64 s0=0 s1=0 s2=70 s3=1 p0=0 p1=0 p2=64 op=0
ld      c6 eb=4 buf=1 off=0x300 sram=0xc800 n0=1 n1=1 n2=64 n3=8 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=8 op=0 sig=ld>mx
mm      c6 dt=f32 accum=0 win=0 a=0x0 b=0xc800 acc=0xd800 m=100 n=8 k=64 a_sm=64 a_sk=1 b_sk=8 b_sn=1 acc_sm=8 acc_sn=1 g=1 a_sg=0 b_sg=0 acc_sg=0 op=0 wait=ld>mx
ld      c6 eb=4 buf=0 off=0x100 sram=0x6400 n0=1 n1=1 n2=100 n3=6 s0=0 s1=0 s2=70 s3=1 p0=0 p1=0 p2=6 op=0
ld      c6 eb=4 buf=1 off=0xcb00 sram=0xd000 n0=1 n1=1 n2=6 n3=8 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=8 op=0 sig=ld>mx
mm      c6 dt=f32 accum=1 win=0 a=0x6400 b=0xd000 acc=0xd800 m=100 n=8 k=6 a_sm=6 a_sk=1 b_sk=8 b_sn=1 acc_sm=8 acc_sn=1 g=1 a_sg=0 b_sg=0 acc_sg=0 op=0 wait=ld>mx sig=mx>st
st      c6 eb=4 buf=2 off=0x300 sram=0xd800 n0=1 n1=1 n2=100 n3=8 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=8 op=0 wait=mx>st
barrier c* op=1
ld      c0 eb=4 buf=2 off=0x0 sram=0x0 n0=1 n1=1 n2=7 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 sig=ld>vx
vec     c0 fn=softmax dst=0x2c00 src0=0x0 src1=none src2=none src3=none n0=1 n1=1 n2=7 n3=200 bcast=0x800000 dtypes=0x0 imm0=0.0 imm1=0.0 imm2=0.0 arg=0 op=1 wait=ld>vx sig=vx>st
st      c0 eb=4 buf=3 off=0x0 sram=0x2c00 n0=1 n1=1 n2=7 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 wait=vx>st
ld      c0 eb=4 buf=2 off=0x15e0 sram=0x1600 n0=1 n1=1 n2=6 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 sig=ld>vx
vec     c0 fn=softmax dst=0x4200 src0=0x1600 src1=none src2=none src3=none n0=1 n1=1 n2=6 n3=200 bcast=0x800000 dtypes=0x0 imm0=0.0 imm1=0.0 imm2=0.0 arg=0 op=1 wait=ld>vx sig=vx>st
st      c0 eb=4 buf=3 off=0x15e0 sram=0x4200 n0=1 n1=1 n2=6 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 wait=vx>st
ld      c1 eb=4 buf=2 off=0x28a0 sram=0x0 n0=1 n1=1 n2=7 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 sig=ld>vx
vec     c1 fn=softmax dst=0x2c00 src0=0x0 src1=none src2=none src3=none n0=1 n1=1 n2=7 n3=200 bcast=0x800000 dtypes=0x0 imm0=0.0 imm1=0.0 imm2=0.0 arg=0 op=1 wait=ld>vx sig=vx>st
st      c1 eb=4 buf=3 off=0x28a0 sram=0x2c00 n0=1 n1=1 n2=7 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 wait=vx>st
ld      c1 eb=4 buf=2 off=0x3e80 sram=0x1600 n0=1 n1=1 n2=6 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 sig=ld>vx
vec     c1 fn=softmax dst=0x4200 src0=0x1600 src1=none src2=none src3=none n0=1 n1=1 n2=6 n3=200 bcast=0x800000 dtypes=0x0 imm0=0.0 imm1=0.0 imm2=0.0 arg=0 op=1 wait=ld>vx sig=vx>st
st      c1 eb=4 buf=3 off=0x3e80 sram=0x4200 n0=1 n1=1 n2=6 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 wait=vx>st
ld      c2 eb=4 buf=2 off=0x5140 sram=0x0 n0=1 n1=1 n2=7 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 sig=ld>vx
vec     c2 fn=softmax dst=0x2c00 src0=0x0 src1=none src2=none src3=none n0=1 n1=1 n2=7 n3=200 bcast=0x800000 dtypes=0x0 imm0=0.0 imm1=0.0 imm2=0.0 arg=0 op=1 wait=ld>vx sig=vx>st
st      c2 eb=4 buf=3 off=0x5140 sram=0x2c00 n0=1 n1=1 n2=7 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 wait=vx>st
ld      c2 eb=4 buf=2 off=0x6720 sram=0x1600 n0=1 n1=1 n2=6 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 sig=ld>vx
vec     c2 fn=softmax dst=0x4200 src0=0x1600 src1=none src2=none src3=none n0=1 n1=1 n2=6 n3=200 bcast=0x800000 dtypes=0x0 imm0=0.0 imm1=0.0 imm2=0.0 arg=0 op=1 wait=ld>vx sig=vx>st
st      c2 eb=4 buf=3 off=0x6720 sram=0x4200 n0=1 n1=1 n2=6 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 wait=vx>st
ld      c3 eb=4 buf=2 off=0x79e0 sram=0x0 n0=1 n1=1 n2=7 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 sig=ld>vx
vec     c3 fn=softmax dst=0x2c00 src0=0x0 src1=none src2=none src3=none n0=1 n1=1 n2=7 n3=200 bcast=0x800000 dtypes=0x0 imm0=0.0 imm1=0.0 imm2=0.0 arg=0 op=1 wait=ld>vx sig=vx>st
st      c3 eb=4 buf=3 off=0x79e0 sram=0x2c00 n0=1 n1=1 n2=7 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 wait=vx>st
ld      c3 eb=4 buf=2 off=0x8fc0 sram=0x1600 n0=1 n1=1 n2=6 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 sig=ld>vx
vec     c3 fn=softmax dst=0x4200 src0=0x1600 src1=none src2=none src3=none n0=1 n1=1 n2=6 n3=200 bcast=0x800000 dtypes=0x0 imm0=0.0 imm1=0.0 imm2=0.0 arg=0 op=1 wait=ld>vx sig=vx>st
st      c3 eb=4 buf=3 off=0x8fc0 sram=0x4200 n0=1 n1=1 n2=6 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 wait=vx>st
ld      c4 eb=4 buf=2 off=0xa280 sram=0x0 n0=1 n1=1 n2=7 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 sig=ld>vx
vec     c4 fn=softmax dst=0x2c00 src0=0x0 src1=none src2=none src3=none n0=1 n1=1 n2=7 n3=200 bcast=0x800000 dtypes=0x0 imm0=0.0 imm1=0.0 imm2=0.0 arg=0 op=1 wait=ld>vx sig=vx>st
st      c4 eb=4 buf=3 off=0xa280 sram=0x2c00 n0=1 n1=1 n2=7 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 wait=vx>st
ld      c4 eb=4 buf=2 off=0xb860 sram=0x1600 n0=1 n1=1 n2=6 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 sig=ld>vx
vec     c4 fn=softmax dst=0x4200 src0=0x1600 src1=none src2=none src3=none n0=1 n1=1 n2=6 n3=200 bcast=0x800000 dtypes=0x0 imm0=0.0 imm1=0.0 imm2=0.0 arg=0 op=1 wait=ld>vx sig=vx>st
st      c4 eb=4 buf=3 off=0xb860 sram=0x4200 n0=1 n1=1 n2=6 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 wait=vx>st
ld      c5 eb=4 buf=2 off=0xcb20 sram=0x0 n0=1 n1=1 n2=7 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 sig=ld>vx
vec     c5 fn=softmax dst=0x2c00 src0=0x0 src1=none src2=none src3=none n0=1 n1=1 n2=7 n3=200 bcast=0x800000 dtypes=0x0 imm0=0.0 imm1=0.0 imm2=0.0 arg=0 op=1 wait=ld>vx sig=vx>st
st      c5 eb=4 buf=3 off=0xcb20 sram=0x2c00 n0=1 n1=1 n2=7 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 wait=vx>st
ld      c5 eb=4 buf=2 off=0xe100 sram=0x1600 n0=1 n1=1 n2=6 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 sig=ld>vx
vec     c5 fn=softmax dst=0x4200 src0=0x1600 src1=none src2=none src3=none n0=1 n1=1 n2=6 n3=200 bcast=0x800000 dtypes=0x0 imm0=0.0 imm1=0.0 imm2=0.0 arg=0 op=1 wait=ld>vx sig=vx>st
st      c5 eb=4 buf=3 off=0xe100 sram=0x4200 n0=1 n1=1 n2=6 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 wait=vx>st
ld      c6 eb=4 buf=2 off=0xf3c0 sram=0x0 n0=1 n1=1 n2=7 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 sig=ld>vx
vec     c6 fn=softmax dst=0x2c00 src0=0x0 src1=none src2=none src3=none n0=1 n1=1 n2=7 n3=200 bcast=0x800000 dtypes=0x0 imm0=0.0 imm1=0.0 imm2=0.0 arg=0 op=1 wait=ld>vx sig=vx>st
st      c6 eb=4 buf=3 off=0xf3c0 sram=0x2c00 n0=1 n1=1 n2=7 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 wait=vx>st
ld      c6 eb=4 buf=2 off=0x109a0 sram=0x1600 n0=1 n1=1 n2=6 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 sig=ld>vx
vec     c6 fn=softmax dst=0x4200 src0=0x1600 src1=none src2=none src3=none n0=1 n1=1 n2=6 n3=200 bcast=0x800000 dtypes=0x0 imm0=0.0 imm1=0.0 imm2=0.0 arg=0 op=1 wait=ld>vx sig=vx>st
st      c6 eb=4 buf=3 off=0x109a0 sram=0x4200 n0=1 n1=1 n2=6 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 wait=vx>st
ld      c7 eb=4 buf=2 off=0x11c60 sram=0x0 n0=1 n1=1 n2=5 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 sig=ld>vx
vec     c7 fn=softmax dst=0x1f80 src0=0x0 src1=none src2=none src3=none n0=1 n1=1 n2=5 n3=200 bcast=0x800000 dtypes=0x0 imm0=0.0 imm1=0.0 imm2=0.0 arg=0 op=1 wait=ld>vx sig=vx>st
st      c7 eb=4 buf=3 off=0x11c60 sram=0x1f80 n0=1 n1=1 n2=5 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 wait=vx>st
ld      c7 eb=4 buf=2 off=0x12c00 sram=0xfc0 n0=1 n1=1 n2=4 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 sig=ld>vx
vec     c7 fn=softmax dst=0x2f40 src0=0xfc0 src1=none src2=none src3=none n0=1 n1=1 n2=4 n3=200 bcast=0x800000 dtypes=0x0 imm0=0.0 imm1=0.0 imm2=0.0 arg=0 op=1 wait=ld>vx sig=vx>st
st      c7 eb=4 buf=3 off=0x12c00 sram=0x2f40 n0=1 n1=1 n2=4 n3=200 s0=0 s1=0 s2=200 s3=1 p0=0 p1=0 p2=200 op=1 wait=vx>st
