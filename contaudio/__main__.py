from contaudio.cli import main

main()
