; NPU program for warboy (2 core(s), 64x128 ws, charged at int8)
; 17 instructions; DRAM buffers:
;   buf 0: x @0x0 (768 bytes)
;   buf 1: w @0x300 (216 bytes)
;   buf 2: r @0x400 (2048 bytes)
;   buf 3: y @0xc00 (512 bytes)
;   op 0: FusedConv node
;   op 1: MaxPool node_2
ld      c0 buf=0 off=0x0 rows=27 bytes=16 stride=16 sram=0x0 op=0
ld      c0 buf=1 off=0x0 rows=27 bytes=8 stride=8 sram=0x200000 op=0 sig=ld>mx
mm      c0 acc=0 g0=0 g1=1 m0=0 m1=128 n0=0 n1=8 k0=0 k1=27 op=0 wait=ld>mx sig=mx>vx
vec     c0 fn=epilogue r0=0 r1=128 elems=1024 src=0x800000 dst=0x800000 nin=0 op=0 wait=mx>vx sig=vx>st
st      c0 buf=2 off=0x0 rows=8 bytes=128 stride=256 sram=0x800000 op=0 wait=vx>st
ld      c1 buf=0 off=0x70 rows=27 bytes=16 stride=16 sram=0x0 op=0
ld      c1 buf=1 off=0x0 rows=27 bytes=8 stride=8 sram=0x200000 op=0 sig=ld>mx
mm      c1 acc=0 g0=0 g1=1 m0=128 m1=256 n0=0 n1=8 k0=0 k1=27 op=0 wait=ld>mx sig=mx>vx
vec     c1 fn=epilogue r0=128 r1=256 elems=1024 src=0x800000 dst=0x800000 nin=0 op=0 wait=mx>vx sig=vx>st
st      c1 buf=2 off=0x80 rows=8 bytes=128 stride=256 sram=0x800000 op=0 wait=vx>st
barrier c* op=1
ld      c0 buf=2 off=0x0 rows=1 bytes=1024 stride=2048 sram=0x0 op=1 sig=ld>vx
vec     c0 fn=maxpool r0=0 r1=4 elems=1024 src=0x0 dst=0x200000 nin=1 op=1 wait=ld>vx sig=vx>st
st      c0 buf=3 off=0x0 rows=1 bytes=256 stride=512 sram=0x200000 op=1 wait=vx>st
ld      c1 buf=2 off=0x400 rows=1 bytes=1024 stride=2048 sram=0x0 op=1 sig=ld>vx
vec     c1 fn=maxpool r0=4 r1=8 elems=1024 src=0x0 dst=0x200000 nin=1 op=1 wait=ld>vx sig=vx>st
st      c1 buf=3 off=0x100 rows=1 bytes=256 stride=512 sram=0x200000 op=1 wait=vx>st
