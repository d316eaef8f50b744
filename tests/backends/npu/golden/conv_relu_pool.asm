; NPU program for warboy (2 core(s), 64x128 ws, 16777216 B scratchpad per core)
; 25 instructions; DRAM buffers:
;   buf 0: x @0x0 (3072 bytes, input)
;   buf 1: w @0xc00 (864 bytes, const)
;   buf 2: r @0xf80 (8192 bytes, temp)
;   buf 3: b @0x2f80 (32 bytes, const)
;   buf 4: y @0x2fc0 (2048 bytes, output)
;   input x: buf 0+0 f32[1, 3, 16, 16] strides [768, 256, 16, 1]
;   output y: buf 4+0 f32[1, 8, 8, 8] strides [512, 64, 8, 1]
;   op 0: FusedConv Conv_c
;   op 1: MaxPool MaxPool_y
cfg     c0 unit=matrix kh=3 kw=3 sh=1 sw=1 dh=1 dw=1 pt=1 pl=1 pb=0 pr=0 h=16 w=16 oh=16 ow=16 flags=0 op=0
ld      c0 eb=4 buf=0 off=0x0 sram=0x0 n0=1 n1=3 n2=9 n3=16 s0=0 s1=256 s2=16 s3=1 p0=0 p1=144 p2=16 op=0
ld      c0 eb=4 buf=1 off=0x0 sram=0xd80 n0=1 n1=1 n2=8 n3=27 s0=0 s1=0 s2=27 s3=1 p0=0 p1=0 p2=27 op=0 sig=ld>mx
mm      c0 dt=f32 accum=0 win=1 a=0x0 b=0xd80 acc=0x1480 m=128 n=8 k=27 p0=0 r0=0 b_sk=1 b_sn=27 acc_sm=1 acc_sn=128 g=1 rows=9 b_sg=0 acc_sg=0 op=0 wait=ld>mx sig=mx>vx
ld      c0 eb=4 buf=3 off=0x0 sram=0x3480 n0=1 n1=1 n2=8 n3=1 s0=0 s1=0 s2=1 s3=0 p0=0 p1=0 p2=1 op=0 sig=ld>vx
vec     c0 fn=add dst=0x1480 src0=0x1480 src1=0x3480 src2=none src3=none n0=1 n1=1 n2=8 n3=128 bcast=0x800 dtypes=0x0 imm0=0.0 imm1=0.0 imm2=0.0 arg=0 op=0 wait=mx>vx,ld>vx
vec     c0 fn=relu dst=0x1480 src0=0x1480 src1=none src2=none src3=none n0=1 n1=1 n2=8 n3=128 bcast=0x0 dtypes=0x0 imm0=0.0 imm1=0.0 imm2=0.0 arg=0 op=0 sig=vx>st
st      c0 eb=4 buf=2 off=0x0 sram=0x1480 n0=1 n1=1 n2=8 n3=128 s0=0 s1=0 s2=256 s3=1 p0=0 p1=0 p2=128 op=0 wait=vx>st
cfg     c1 unit=matrix kh=3 kw=3 sh=1 sw=1 dh=1 dw=1 pt=1 pl=1 pb=0 pr=0 h=16 w=16 oh=16 ow=16 flags=0 op=0
ld      c1 eb=4 buf=0 off=0x1c0 sram=0x0 n0=1 n1=3 n2=9 n3=16 s0=0 s1=256 s2=16 s3=1 p0=0 p1=144 p2=16 op=0
ld      c1 eb=4 buf=1 off=0x0 sram=0xd80 n0=1 n1=1 n2=8 n3=27 s0=0 s1=0 s2=27 s3=1 p0=0 p1=0 p2=27 op=0 sig=ld>mx
mm      c1 dt=f32 accum=0 win=1 a=0x0 b=0xd80 acc=0x1480 m=128 n=8 k=27 p0=128 r0=7 b_sk=1 b_sn=27 acc_sm=1 acc_sn=128 g=1 rows=9 b_sg=0 acc_sg=0 op=0 wait=ld>mx sig=mx>vx
ld      c1 eb=4 buf=3 off=0x0 sram=0x3480 n0=1 n1=1 n2=8 n3=1 s0=0 s1=0 s2=1 s3=0 p0=0 p1=0 p2=1 op=0 sig=ld>vx
vec     c1 fn=add dst=0x1480 src0=0x1480 src1=0x3480 src2=none src3=none n0=1 n1=1 n2=8 n3=128 bcast=0x800 dtypes=0x0 imm0=0.0 imm1=0.0 imm2=0.0 arg=0 op=0 wait=mx>vx,ld>vx
vec     c1 fn=relu dst=0x1480 src0=0x1480 src1=none src2=none src3=none n0=1 n1=1 n2=8 n3=128 bcast=0x0 dtypes=0x0 imm0=0.0 imm1=0.0 imm2=0.0 arg=0 op=0 sig=vx>st
st      c1 eb=4 buf=2 off=0x200 sram=0x1480 n0=1 n1=1 n2=8 n3=128 s0=0 s1=0 s2=256 s3=1 p0=0 p1=0 p2=128 op=0 wait=vx>st
barrier c* op=1
cfg     c0 unit=vector kh=2 kw=2 sh=2 sw=2 dh=1 dw=1 pt=0 pl=0 pb=0 pr=0 h=16 w=16 oh=8 ow=8 flags=0 op=1
ld      c0 eb=4 buf=2 off=0x0 sram=0x0 n0=1 n1=4 n2=16 n3=16 s0=0 s1=256 s2=16 s3=1 p0=0 p1=256 p2=16 op=1 sig=ld>vx
vec     c0 fn=maxpool dst=0x2000 src0=0x0 src1=none src2=none src3=none n0=1 n1=4 n2=8 n3=8 bcast=0x0 dtypes=0x0 imm0=0.0 imm1=0.0 imm2=0.0 arg=0 op=1 wait=ld>vx sig=vx>st
st      c0 eb=4 buf=4 off=0x0 sram=0x2000 n0=1 n1=4 n2=8 n3=8 s0=0 s1=64 s2=8 s3=1 p0=0 p1=64 p2=8 op=1 wait=vx>st
cfg     c1 unit=vector kh=2 kw=2 sh=2 sw=2 dh=1 dw=1 pt=0 pl=0 pb=0 pr=0 h=16 w=16 oh=8 ow=8 flags=0 op=1
ld      c1 eb=4 buf=2 off=0x1000 sram=0x0 n0=1 n1=4 n2=16 n3=16 s0=0 s1=256 s2=16 s3=1 p0=0 p1=256 p2=16 op=1 sig=ld>vx
vec     c1 fn=maxpool dst=0x2000 src0=0x0 src1=none src2=none src3=none n0=1 n1=4 n2=8 n3=8 bcast=0x0 dtypes=0x0 imm0=0.0 imm1=0.0 imm2=0.0 arg=0 op=1 wait=ld>vx sig=vx>st
st      c1 eb=4 buf=4 off=0x400 sram=0x2000 n0=1 n1=4 n2=8 n3=8 s0=0 s1=64 s2=8 s3=1 p0=0 p1=64 p2=8 op=1 wait=vx>st
