from kcompiler.cli import main

main()
