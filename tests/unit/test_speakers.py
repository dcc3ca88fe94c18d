"""Word-to-speaker assignment: overlap wins, nearest turn within a second, segments by word time."""

from core.transcript import Segment, SpeakerTurn, Word
from serve_app.speakers import assign_speakers, speaker_at, speakers_in_order

TURNS = [SpeakerTurn("A", 0.0, 2.0), SpeakerTurn("B", 1.8, 4.0), SpeakerTurn("A", 6.0, 7.0)]


def test_largest_overlap_wins():
    assert speaker_at(1.7, 2.0, TURNS) == "A"  # 0.2 s of A, 0.2 of B... A first by 0.1
    assert speaker_at(1.85, 2.5, TURNS) == "B"


def test_word_in_a_gap_takes_the_nearest_turn_within_a_second():
    assert speaker_at(4.3, 4.6, TURNS) == "B"
    assert speaker_at(5.5, 5.8, TURNS) == "A"


def test_word_far_from_every_turn_stays_unlabelled():
    assert speaker_at(20.0, 21.0, TURNS) is None
    assert speaker_at(0.0, 1.0, []) is None


def test_segments_take_the_speaker_with_most_word_time():
    words = (Word("one", 1.0, 1.5), Word("two", 2.5, 3.9))
    [segment] = assign_speakers([Segment("one two", 1.0, 3.9, words=words)], TURNS)
    assert [w.speaker for w in segment.words] == ["A", "B"]
    assert segment.speaker == "B"


def test_segments_without_words_use_time_overlap():
    [segment] = assign_speakers([Segment("x", 6.1, 6.9)], TURNS)
    assert segment.speaker == "A"


def test_no_turns_leaves_segments_unchanged():
    segments = [Segment("x", 0.0, 1.0)]
    assert assign_speakers(segments, []) == segments


def test_speakers_in_order_of_first_appearance():
    words = (Word("a", 0, 1, speaker="B"), Word("b", 1, 2, speaker="A"), Word("c", 2, 3, speaker="B"))
    assert speakers_in_order([Segment("a b c", 0, 3, words=words, speaker="B")]) == ["B", "A"]
