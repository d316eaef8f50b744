; NPU program for atom (8 core(s), 64x128 ws, charged at int8)
; 60 instructions; DRAM buffers:
;   buf 0: a @0x0 (7000 bytes)
;   buf 1: w @0x1b80 (14000 bytes)
;   buf 2: s @0x5240 (20000 bytes)
;   buf 3: y @0xa080 (20000 bytes)
;   op 0: MatMul node
;   op 1: Softmax node_1
ld      c0 buf=0 off=0x0 rows=100 bytes=70 stride=70 sram=0x0 op=0
ld      c0 buf=1 off=0x0 rows=70 bytes=32 stride=200 sram=0x80000 op=0 sig=ld>mx
mm      c0 acc=0 g0=0 g1=1 m0=0 m1=100 n0=0 n1=32 k0=0 k1=70 op=0 wait=ld>mx sig=mx>vx
vec     c0 fn=epilogue r0=0 r1=100 elems=3200 src=0x200000 dst=0x200000 nin=0 op=0 wait=mx>vx sig=vx>st
st      c0 buf=2 off=0x0 rows=100 bytes=32 stride=200 sram=0x200000 op=0 wait=vx>st
ld      c1 buf=0 off=0x0 rows=100 bytes=70 stride=70 sram=0x0 op=0
ld      c1 buf=1 off=0x20 rows=70 bytes=32 stride=200 sram=0x80000 op=0 sig=ld>mx
mm      c1 acc=0 g0=0 g1=1 m0=0 m1=100 n0=32 n1=64 k0=0 k1=70 op=0 wait=ld>mx sig=mx>vx
vec     c1 fn=epilogue r0=0 r1=100 elems=3200 src=0x200000 dst=0x200000 nin=0 op=0 wait=mx>vx sig=vx>st
st      c1 buf=2 off=0x20 rows=100 bytes=32 stride=200 sram=0x200000 op=0 wait=vx>st
ld      c2 buf=0 off=0x0 rows=100 bytes=70 stride=70 sram=0x0 op=0
ld      c2 buf=1 off=0x40 rows=70 bytes=32 stride=200 sram=0x80000 op=0 sig=ld>mx
mm      c2 acc=0 g0=0 g1=1 m0=0 m1=100 n0=64 n1=96 k0=0 k1=70 op=0 wait=ld>mx sig=mx>vx
vec     c2 fn=epilogue r0=0 r1=100 elems=3200 src=0x200000 dst=0x200000 nin=0 op=0 wait=mx>vx sig=vx>st
st      c2 buf=2 off=0x40 rows=100 bytes=32 stride=200 sram=0x200000 op=0 wait=vx>st
ld      c3 buf=0 off=0x0 rows=100 bytes=70 stride=70 sram=0x0 op=0
ld      c3 buf=1 off=0x60 rows=70 bytes=32 stride=200 sram=0x80000 op=0 sig=ld>mx
mm      c3 acc=0 g0=0 g1=1 m0=0 m1=100 n0=96 n1=128 k0=0 k1=70 op=0 wait=ld>mx sig=mx>vx
vec     c3 fn=epilogue r0=0 r1=100 elems=3200 src=0x200000 dst=0x200000 nin=0 op=0 wait=mx>vx sig=vx>st
st      c3 buf=2 off=0x60 rows=100 bytes=32 stride=200 sram=0x200000 op=0 wait=vx>st
ld      c4 buf=0 off=0x0 rows=100 bytes=70 stride=70 sram=0x0 op=0
ld      c4 buf=1 off=0x80 rows=70 bytes=32 stride=200 sram=0x80000 op=0 sig=ld>mx
mm      c4 acc=0 g0=0 g1=1 m0=0 m1=100 n0=128 n1=160 k0=0 k1=70 op=0 wait=ld>mx sig=mx>vx
vec     c4 fn=epilogue r0=0 r1=100 elems=3200 src=0x200000 dst=0x200000 nin=0 op=0 wait=mx>vx sig=vx>st
st      c4 buf=2 off=0x80 rows=100 bytes=32 stride=200 sram=0x200000 op=0 wait=vx>st
ld      c5 buf=0 off=0x0 rows=100 bytes=70 stride=70 sram=0x0 op=0
ld      c5 buf=1 off=0xa0 rows=70 bytes=32 stride=200 sram=0x80000 op=0 sig=ld>mx
mm      c5 acc=0 g0=0 g1=1 m0=0 m1=100 n0=160 n1=192 k0=0 k1=70 op=0 wait=ld>mx sig=mx>vx
vec     c5 fn=epilogue r0=0 r1=100 elems=3200 src=0x200000 dst=0x200000 nin=0 op=0 wait=mx>vx sig=vx>st
st      c5 buf=2 off=0xa0 rows=100 bytes=32 stride=200 sram=0x200000 op=0 wait=vx>st
ld      c6 buf=0 off=0x0 rows=100 bytes=70 stride=70 sram=0x0 op=0
ld      c6 buf=1 off=0xc0 rows=70 bytes=8 stride=200 sram=0x80000 op=0 sig=ld>mx
mm      c6 acc=0 g0=0 g1=1 m0=0 m1=100 n0=192 n1=200 k0=0 k1=70 op=0 wait=ld>mx sig=mx>vx
vec     c6 fn=epilogue r0=0 r1=100 elems=800 src=0x200000 dst=0x200000 nin=0 op=0 wait=mx>vx sig=vx>st
st      c6 buf=2 off=0xc0 rows=100 bytes=8 stride=200 sram=0x200000 op=0 wait=vx>st
barrier c* op=1
ld      c0 buf=2 off=0x0 rows=1 bytes=2600 stride=20000 sram=0x0 op=1 sig=ld>vx
vec     c0 fn=softmax r0=0 r1=13 elems=2600 src=0x0 dst=0x80000 nin=1 op=1 wait=ld>vx sig=vx>st
st      c0 buf=3 off=0x0 rows=1 bytes=2600 stride=20000 sram=0x80000 op=1 wait=vx>st
ld      c1 buf=2 off=0xa28 rows=1 bytes=2600 stride=20000 sram=0x0 op=1 sig=ld>vx
vec     c1 fn=softmax r0=13 r1=26 elems=2600 src=0x0 dst=0x80000 nin=1 op=1 wait=ld>vx sig=vx>st
st      c1 buf=3 off=0xa28 rows=1 bytes=2600 stride=20000 sram=0x80000 op=1 wait=vx>st
ld      c2 buf=2 off=0x1450 rows=1 bytes=2600 stride=20000 sram=0x0 op=1 sig=ld>vx
vec     c2 fn=softmax r0=26 r1=39 elems=2600 src=0x0 dst=0x80000 nin=1 op=1 wait=ld>vx sig=vx>st
st      c2 buf=3 off=0x1450 rows=1 bytes=2600 stride=20000 sram=0x80000 op=1 wait=vx>st
ld      c3 buf=2 off=0x1e78 rows=1 bytes=2600 stride=20000 sram=0x0 op=1 sig=ld>vx
vec     c3 fn=softmax r0=39 r1=52 elems=2600 src=0x0 dst=0x80000 nin=1 op=1 wait=ld>vx sig=vx>st
st      c3 buf=3 off=0x1e78 rows=1 bytes=2600 stride=20000 sram=0x80000 op=1 wait=vx>st
ld      c4 buf=2 off=0x28a0 rows=1 bytes=2600 stride=20000 sram=0x0 op=1 sig=ld>vx
vec     c4 fn=softmax r0=52 r1=65 elems=2600 src=0x0 dst=0x80000 nin=1 op=1 wait=ld>vx sig=vx>st
st      c4 buf=3 off=0x28a0 rows=1 bytes=2600 stride=20000 sram=0x80000 op=1 wait=vx>st
ld      c5 buf=2 off=0x32c8 rows=1 bytes=2600 stride=20000 sram=0x0 op=1 sig=ld>vx
vec     c5 fn=softmax r0=65 r1=78 elems=2600 src=0x0 dst=0x80000 nin=1 op=1 wait=ld>vx sig=vx>st
st      c5 buf=3 off=0x32c8 rows=1 bytes=2600 stride=20000 sram=0x80000 op=1 wait=vx>st
ld      c6 buf=2 off=0x3cf0 rows=1 bytes=2600 stride=20000 sram=0x0 op=1 sig=ld>vx
vec     c6 fn=softmax r0=78 r1=91 elems=2600 src=0x0 dst=0x80000 nin=1 op=1 wait=ld>vx sig=vx>st
st      c6 buf=3 off=0x3cf0 rows=1 bytes=2600 stride=20000 sram=0x80000 op=1 wait=vx>st
ld      c7 buf=2 off=0x4718 rows=1 bytes=1800 stride=20000 sram=0x0 op=1 sig=ld>vx
vec     c7 fn=softmax r0=91 r1=100 elems=1800 src=0x0 dst=0x80000 nin=1 op=1 wait=ld>vx sig=vx>st
st      c7 buf=3 off=0x4718 rows=1 bytes=1800 stride=20000 sram=0x80000 op=1 wait=vx>st
